"""Jobs: submission, the task state machine, the scheduling loop, and what
agents run. The store holds every job and task; this package keeps a cache.

- ``model.py``: a job's rules (run policy, what follows a task's end); pure.
- ``transitions.py``: every state change as one transaction with its ledger change.
- ``cache.py``: this server's picture of the live jobs, kept level with the store.
- ``writer.py``: runs a transition and applies its outcome to the cache.
- ``scheduling.py``: the leader's scheduling loop and its view of the cluster.
- ``service.py``: the use cases routes and agents call, on any server.

May import ``core``, ``store`` and the ledger service; nothing above ``service``.
"""

from apportion.service.jobs.model import (
    ACTIVE_TASK,
    JOB_LABEL,
    LEASE_QUEUE,
    TASK_LABEL,
    RunPolicy,
    TaskReport,
)
from apportion.service.jobs.service import JobsService

__all__ = ["ACTIVE_TASK", "JOB_LABEL", "LEASE_QUEUE", "TASK_LABEL", "JobsService", "RunPolicy",
           "TaskReport"]
