"""Which devices a task gets on a node: matching ones, linked ones, shares.

A node describes its devices in ``Node.devices``; what links them is in each
device's ``attrs``: ``nvlink`` (ids of the peers it has NVLink to),
``pcie_switch`` and ``numa``. A multi-GPU task gets the free matching devices
with the most links among them; a single-GPU task takes the device whose
loss breaks the fewest free linked groups, so linked sets stay whole for the
jobs that need them.

Shares (time-slicing, Slurm shards): a node offers a device as ``N`` share
slots of resource ``<family>.shares`` (see ``share_devices`` and
``core.gpu_shares``); each slot is a device of its own for the ledger, so a
device can never give out more than its ``N`` shares. A task asking for
several shares gets them on one device (``gpu_shares.pick_slots``), the one
with the fewest free slots that has enough, so that other devices stay whole;
when no single device has enough, the node cannot take the task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

from apportion.core.gpu_shares import pick_slots, tasks_fit
from apportion.core.model import Device
from apportion.core.scheduling.capacity import NodeRec
from apportion.core.scheduling.constraints import DeviceRequirement

EXHAUSTIVE_LIMIT = 200
"""Largest number of device subsets compared one by one; beyond it a greedy
choice (grow the set by the best-linked device) is used."""


def share_devices(device: Device, shares: int) -> tuple[Device, ...]:
    """``device`` offered as ``shares`` slots (for a resource ``<family>.shares``)."""
    attrs = {**device.attrs, "parent": device.id, "shares": shares}
    return tuple(
        Device(f"{device.id}/{k}", device.model, device.memory, device.uuid, device.serial, attrs)
        for k in range(shares)
    )


def share_slots(devices: Iterable[Device]) -> bool:
    """Whether ``devices`` are share slots (they name their ``parent`` GPU),
    whatever their resource is called: the one test of it, for ``choose``
    and for the filters that count what ``choose`` will give
    (``filters.DeviceConstraints``), so that a node the filters offer is a
    node ``choose`` gives devices on (the preemption planner relies on it)."""
    return any("parent" in d.attrs for d in devices)


def tasks_held(ids: Sequence[str], by_id: Mapping[str, Device], count: int) -> int:
    """Tasks of ``count`` devices each the free devices ``ids`` hold, as
    ``choose`` takes them: share slots per GPU (``gpu_shares.tasks_fit``),
    other devices by number. The filters and backfill's arithmetic count
    with it, so that what they promise ``choose`` gives."""
    if share_slots(by_id[d] for d in ids):
        return tasks_fit(ids, by_id, count)
    return len(ids) // count


def link(a: Device, b: Device) -> int:
    """How well two devices talk: NVLink 4, same PCIe switch 2, same NUMA node 1."""
    score = 0
    peers = a.attrs.get("nvlink") or ()
    if b.id in peers or a.id in (b.attrs.get("nvlink") or ()):
        score += 4
    sw = a.attrs.get("pcie_switch")
    if sw is not None and sw == b.attrs.get("pcie_switch"):
        score += 2
    numa = a.attrs.get("numa")
    if numa is not None and numa == b.attrs.get("numa"):
        score += 1
    return score


def set_link_score(devices: Sequence[Device]) -> int:
    return sum(link(a, b) for a, b in combinations(devices, 2))


def matching_free(rec: NodeRec, resource: str, terms: Sequence[DeviceRequirement]) -> list[str]:
    by_id = rec.devices.get(resource, {})
    free = rec.free_devices.get(resource, [])
    if not terms:
        return list(free)
    return [d for d in free if all(t.matches_device(by_id[d]) for t in terms)]


def choose(
    rec: NodeRec, resource: str, count: int, terms: Sequence[DeviceRequirement]
) -> tuple[str, ...] | None:
    """``count`` free devices of ``resource`` on ``rec`` matching ``terms``,
    or None when the node has too few."""
    if not terms and resource in rec.plain_devices:
        # The first free ones (what the code below comes to), without the
        # copy of the free list.
        free = rec.free_devices.get(resource, ())
        return tuple(free[:count]) if len(free) >= count else None
    ids = matching_free(rec, resource, terms)
    if len(ids) < count:
        return None
    if resource in rec.plain_devices:
        return tuple(ids[:count])  # what the test below decides, known per node
    by_id = rec.devices[resource]
    devices = [by_id[d] for d in ids]
    if not any(d.attrs for d in devices):
        # No links and no share slots: every choice scores the same, and
        # ties keep device order (what the searches below return too).
        return tuple(ids[:count])
    if share_slots(devices):
        return pick_slots(ids, by_id, count)
    if count == 1:
        return (_least_linked(devices).id,)
    return tuple(d.id for d in _best_linked(devices, count))


def _least_linked(devices: list[Device]) -> Device:
    # Ties keep device order, so a node without link info hands out GPU 0 first.
    return min(devices, key=lambda d: sum(link(d, o) for o in devices if o is not d))


def _best_linked(devices: list[Device], count: int) -> list[Device]:
    if len(devices) == count:
        return devices
    n_sets = _n_choose_k(len(devices), count)
    if n_sets <= EXHAUSTIVE_LIMIT:
        best = max(combinations(devices, count), key=set_link_score)
        return list(best)
    chosen = [max(devices, key=lambda d: sum(link(d, o) for o in devices))]
    rest = [d for d in devices if d is not chosen[0]]
    while len(chosen) < count:
        nxt = max(rest, key=lambda d: sum(link(d, c) for c in chosen))
        chosen.append(nxt)
        rest.remove(nxt)
    return chosen


def _n_choose_k(n: int, k: int) -> int:
    out = 1
    for i in range(k):
        out = out * (n - i) // (i + 1)
    return out
