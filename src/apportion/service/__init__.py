"""Use cases over the store: the only layer that combines core decisions with
storage, owns transactions, the clock and events. ``wiring.py`` builds every
service and loop; ``jobs/`` holds the job model; ``ledger_service.py`` the
ledger's grants and releases. May import ``core``, ``store``, ``exceptions``;
never ``server``, ``cli`` or ``agent``."""
