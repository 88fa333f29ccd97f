"""What a class verdict (``filters.class_verdict``) learns about each node
class that does not depend on a task's amounts, kept per job shape less its
amounts.

The bench's 180 job shapes are four such shapes (plain, a label, GPUs,
GPUs of a model): a new shape's verdict asked every class filter of every
class again, the device terms of every device included, though only
``ResourcesFit`` and the device count's comparison read the amounts
(bench/README.md, h29-place). A class filter tells the facts what it reads:

* ``amount_free = True``: its ``check_class`` reads the job's constraints,
  its required node affinity and the class, never the amounts: its answer
  is asked once here;
* ``fixed(job, spec, cls)`` and ``judge(spec, cls, fixed)``: ``fixed`` is
  the part that reads no amount (None: it passes whatever the amounts),
  ``judge`` gives ``check_class``'s answer from it;
* neither (``ResourcesFit``): ``check_class`` is asked for every verdict.

This module imports no filter (``filters`` imports it): the filters are
handed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apportion.core.reasons import Reason
from apportion.core.scheduling.capacity import NodeClass
from apportion.core.scheduling.constraints import Constraints, family
from apportion.core.scheduling.devices import share_slots
from apportion.core.scheduling.jobs import Job, TaskSpec
from apportion.core.scheduling.state import ClusterState

Steps = tuple[tuple[Any, Any], ...]
"""(filter, its fixed part or None: ask ``check_class``) to run in order."""

ClassFacts = tuple[NodeClass, Steps, Reason | None, bool]
"""Per class: the steps that read amounts, the reason of the first
amount-free filter that rejects the class after them (None: none does), and
whether its nodes' devices need a check per node."""

_KEY = "class-facts"
_BOUND = 1 << 16
"""Facts (shapes less amounts × classes) kept before they are dropped and
learnt again, so many classes do not multiply the memory held (the cache is
cleared anyway whenever the node classes change)."""


def needs_node_device_check(constraints: Constraints, spec: TaskSpec, cls: NodeClass) -> bool:
    if not cls.devices:
        return False  # neither test below can hold without devices
    for r in spec.resources:
        terms = constraints.device_terms(family(r))
        devices = cls.devices.get(r)
        if devices and share_slots(devices):
            return True  # share slots: how they spread over GPUs differs by node
        if terms and devices and not all(
            all(t.matches_device(d) for t in terms) for d in devices
        ):
            return True
    return False


def class_facts(
    state: ClusterState, job: Job, spec: TaskSpec, class_filters: Sequence[Any]
) -> list[ClassFacts]:
    """Each class's facts for ``spec`` of ``job`` (``state.classes`` order),
    learnt once per (constraints, required node affinity, required node
    anti-affinity, requested resource names in ``spec``'s order, filters).
    Rules that target jobs are left out of the key: no class filter reads
    them, and one per job would keep one entry per job."""
    kept: dict[Any, list[ClassFacts]] | None = state.cache.get(_KEY)
    if kept is None:
        kept = state.cache[_KEY] = {}
    key = (job.constraints, tuple(a for a in job.affinity if a.required and a.target == "node"),
           tuple(a for a in job.anti_affinity if a.required and a.target == "node"),
           tuple(spec.resources), tuple(class_filters))
    facts = kept.get(key)
    if facts is None:
        facts = [_of_class(job, spec, cls, class_filters) for cls in state.classes]
        if (len(kept) + 1) * len(facts) > _BOUND:
            kept.clear()
        kept[key] = facts
    return facts


def _of_class(job: Job, spec: TaskSpec, cls: NodeClass, class_filters: Sequence[Any]
              ) -> ClassFacts:
    steps: list[tuple[Any, Any]] = []
    fixed_reason = None
    for plugin in class_filters:
        if getattr(plugin, "amount_free", False):
            fixed_reason = plugin.check_class(job, spec, cls)
            if fixed_reason is not None:
                break  # the filters after it are never asked
        elif hasattr(plugin, "judge"):
            if not hasattr(plugin, "fixed"):
                raise TypeError(f"{type(plugin).__name__}: a class filter with judge needs fixed")
            part = plugin.fixed(job, spec, cls)
            if part is not None:
                steps.append((plugin, part))
        else:
            steps.append((plugin, None))
    return cls, tuple(steps), fixed_reason, needs_node_device_check(job.constraints, spec, cls)
