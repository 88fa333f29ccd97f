"""GPU shares: one GPU offered as ``N`` slots, and ``gpu: 0.25`` asked of it.

An agent started with ``--gpu-shares N`` offers each GPU it splits as ``N``
slot devices of resource ``gpu.shares`` (``"1/0"`` .. ``"1/3"`` for GPU 1
split in 4), each slot carrying ``parent`` (the GPU's id) and ``shares``
(``N``). The ledger then holds shares exactly as it holds any device: a slot
is granted once, so a GPU never gives out more than its ``N`` shares, with no
new bookkeeping and the store's device check unchanged. A GPU is offered
whole (``gpu``) or as shares (``gpu.shares``), never both, so a whole-GPU
request can never land on a GPU that has shares granted.

A job asks in GPUs: ``gpu: 0.25`` is rewritten at submission into
``gpu.shares: 1`` plus the constraint ``gpu.shares=4`` (slots of GPUs split
in 4), because one slot of a GPU split in 2 would be half a GPU.
``share_request`` does that arithmetic and refuses what cannot be granted:
a fraction that is not a multiple of ``1/N`` for any ``N`` offered, a
fraction above 1 that is not whole, a share when no node offers shares.

The shares of one task stay on one GPU (``pick_slots``): a task sees one
device in ``CUDA_VISIBLE_DEVICES`` and its part of it in
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from apportion.core.errors import InvalidInput, InvalidQuantity
from apportion.core.model import Device, Node

GPU = "gpu"
SHARES = "gpu.shares"
"""The resource a split GPU is offered as; also the node label and the device
attribute holding ``N``."""
MAX_SPLIT = 100
"""Most shares one GPU may be split into: a share is at least 1 % of it, the
smallest step of ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``."""


def split_gpu(device: Device, shares: int) -> tuple[Device, ...]:
    """``device`` offered as ``shares`` slots of ``gpu.shares``."""
    if not 2 <= shares <= MAX_SPLIT:
        raise InvalidInput(
            f"gpu_shares: {shares} is out of range; split a GPU in 2 to {MAX_SPLIT} shares",
            field="gpu_shares",
        )
    attrs = {**device.attrs, "parent": device.id, "shares": shares}
    return tuple(
        Device(f"{device.id}/{k}", device.model, device.memory, device.uuid, device.serial, attrs)
        for k in range(shares)
    )


def parent_of(device: Device) -> str:
    return str(device.attrs.get("parent", device.id))


def splits_offered(nodes: Iterable[Node]) -> set[int]:
    """Every ``N`` some node splits its GPUs into."""
    out: set[int] = set()
    for node in nodes:
        for device in node.devices.get(SHARES, ()):
            n = device.attrs.get("shares")
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                out.add(n)
    return out


@dataclass(frozen=True, slots=True)
class ShareRequest:
    """``shares`` slots of a GPU split in ``split``: ``gpu: 0.25`` is (1, 4)."""

    shares: int
    split: int

    @property
    def percent(self) -> int:
        return 100 * self.shares // self.split


def gpu_fraction(value: object) -> Fraction | None:
    """The GPUs ``value`` asks for as an exact fraction (``0.25``, ``"0.25"``,
    ``"1/3"``: a third has no exact decimal), or None when it is not a plain
    number (``parse_quantity`` then says what is wrong)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    text = repr(value) if isinstance(value, float) else value
    if not isinstance(text, str):
        return None
    try:
        amount = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        return None
    return amount if amount >= 0 else None


def share_request(value: object, splits: Iterable[int], field: str) -> ShareRequest | None:
    """What ``gpu: <value>`` asks for: None for whole GPUs (left as they
    are), a ``ShareRequest`` for a share of one GPU. ``splits`` are the ``N``
    the cluster offers; the smallest one the fraction is a multiple of wins,
    so ``0.5`` on GPUs split in 2 and in 4 takes one slot of a GPU split in 2."""
    amount = gpu_fraction(value)
    if amount is None or amount.denominator == 1:
        return None
    if amount > 1:
        raise InvalidQuantity(
            f"{field}: {value!r} GPUs is more than one GPU and not whole; ask for whole GPUs "
            "(1, 2, ...) or a share of one GPU below 1 (0.25, 0.5)",
            field=field,
        )
    offered = sorted(splits)
    if not offered:
        raise InvalidQuantity(
            f"{field}: {value!r} is a share of a GPU, but no node offers GPU shares; start an "
            "agent with --gpu-shares N, or ask for whole GPUs",
            field=field,
        )
    for n in offered:
        shares = amount * n
        if shares.denominator == 1:
            return ShareRequest(int(shares), n)
    steps = " or ".join(f"1/{n}" for n in offered)
    raise InvalidQuantity(
        f"{field}: {value!r} is not a multiple of {steps}; GPUs here are split in "
        f"{', '.join(str(n) for n in offered)} shares (e.g. {_example(offered[0])})",
        field=field,
    )


def _example(n: int) -> str:
    return ", ".join(fraction_text(Fraction(k, n)) for k in range(1, min(n, 3)))


def fraction_text(amount: Fraction) -> str:
    """``0.25`` where a decimal is exact, else ``1/3``."""
    scaled = amount * 10**6
    if scaled.denominator == 1:
        return str(Decimal(int(scaled)) / 10**6).rstrip("0").rstrip(".") or "0"
    return f"{amount.numerator}/{amount.denominator}"


def pick_slots(
    free: Sequence[str], by_id: Mapping[str, Device], count: int
) -> tuple[str, ...] | None:
    """``count`` free slots on one GPU: the GPU with the fewest free slots
    that has enough, so that other GPUs stay whole for larger shares. More
    than one GPU's worth takes whole GPUs only (every slot of each). None
    when no GPU (or set of whole GPUs) can give them."""
    groups: dict[str, list[str]] = {}
    for slot in free:
        groups.setdefault(parent_of(by_id[slot]), []).append(slot)
    split = max((_split(by_id[s]) for s in free), default=0)
    if count <= split:
        enough = [g for g in groups.values() if len(g) >= count]
        if not enough:
            return None
        return tuple(min(enough, key=len)[:count])
    if split == 0 or count % split:
        return None
    whole = [g for g in groups.values() if len(g) == split]
    if len(whole) < count // split:
        return None
    return tuple(s for g in whole[: count // split] for s in g)


def tasks_fit(free: Sequence[str], by_id: Mapping[str, Device], count: int) -> int:
    """How many tasks of ``count`` slots each the free slots ``free`` hold,
    each task's slots on one GPU (or on whole GPUs), as ``pick_slots`` takes
    them: what ``len(free) // count`` would overstate when the free slots
    are spread over GPUs."""
    if count <= 0:
        return 0
    groups: dict[str, int] = {}
    for slot in free:
        parent = parent_of(by_id[slot])
        groups[parent] = groups.get(parent, 0) + 1
    split = max((_split(by_id[s]) for s in free), default=0)
    if count <= split:
        return sum(n // count for n in groups.values())
    if split == 0 or count % split:
        return 0
    return sum(1 for n in groups.values() if n == split) // (count // split)


def one_gpu(ids: Sequence[str], by_id: Mapping[str, Device]) -> bool:
    """Whether slots ``ids`` keep to the rule ``pick_slots`` follows: all on
    one GPU, or (more than one GPU's worth) every slot of whole GPUs."""
    groups: dict[str, int] = {}
    for slot in ids:
        parent = parent_of(by_id[slot])
        groups[parent] = groups.get(parent, 0) + 1
    split = max((_split(by_id[s]) for s in ids), default=1)
    if len(ids) <= split:
        return len(groups) <= 1
    return all(n == split for n in groups.values())


def _split(device: Device) -> int:
    n = device.attrs.get("shares")
    return n if isinstance(n, int) and not isinstance(n, bool) else 1
