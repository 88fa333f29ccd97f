"""Errors the scheduling core raises on purpose."""

from __future__ import annotations

from apportion.exceptions import ApportionError


class JobRejected(ApportionError):
    """A job is refused at submission: unknown queue, priority out of bounds,
    or a request that can never fit any node or its queue's quota."""

    code = "job_rejected"
    status = 422
