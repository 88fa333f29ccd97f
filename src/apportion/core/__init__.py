"""The pure core: resources, the ledger, scheduling, health rules,
forecasting, autoscale policy, the simulator. No I/O, no wall clock, no
globals: time, randomness and snapshots are passed in. Imports no other
apportion package (contract in pyproject.toml)."""
