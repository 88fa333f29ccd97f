"""apportion: a resource manager for heterogeneous compute clusters.

Packages, from the edges down (imports point down only; ``docs/architecture.md``):

- ``cli``, ``agent``, ``server``: processes, HTTP, the terminal;
- ``client`` (with ``async_client``) and ``protocol``: the typed HTTP client, every
  call defined once; the agent wire models and the task environment, defined once;
- ``service``: use cases, transactions, the clock, the composition root;
- ``store``: SQL (SQLite, PostgreSQL), migrations, blobs;
- ``core``: pure scheduling and ledger logic, the simulator.

``guard`` (an in-process guard) and ``providers`` (autoscaling back ends)
stand beside them.
"""
