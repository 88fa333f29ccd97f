"""How many bytes a loaded object holds, in host memory and on GPUs.

Counts array buffers (numpy, torch, cupy: anything with an integer
``nbytes``), torch modules' parameters and buffers, and walks containers and
plain objects a few levels deep. Shared buffers are counted once per object
walked. It is an estimate of what eviction can give back, not of every
interpreter byte; pass a sizer of your own for exotic objects.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 4


@dataclass(frozen=True, slots=True)
class Size:
    memory: int = 0
    gpu_memory: int = 0

    def __add__(self, other: Size) -> Size:
        return Size(self.memory + other.memory, self.gpu_memory + other.gpu_memory)


def estimate_size(value: object) -> Size:
    """Bytes held by ``value`` in host memory and in GPU memory."""
    return _size(value, set(), 0)


def _size(value: object, seen: set[int], depth: int) -> Size:
    if id(value) in seen:
        return Size()
    seen.add(id(value))
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int) and not isinstance(value, type):
        return Size(0, nbytes) if _on_gpu(value) else Size(nbytes, 0)
    if isinstance(value, bytes | bytearray | str):
        return Size(sys.getsizeof(value))
    if isinstance(value, memoryview):
        return Size(value.nbytes)
    if depth >= MAX_DEPTH:
        return Size(sys.getsizeof(value))
    return _walk(value, seen, depth + 1)


def _walk(value: object, seen: set[int], depth: int) -> Size:
    total = Size(sys.getsizeof(value))
    for child in _children(value):
        total = total + _size(child, seen, depth)
    return total


def _children(value: object) -> Iterable[object]:
    if _is_torch_module(value):
        yield from value.parameters()  # type: ignore[attr-defined]
        yield from value.buffers()  # type: ignore[attr-defined]
        return
    if isinstance(value, Mapping):
        yield from value.values()
    elif isinstance(value, list | tuple | set | frozenset):
        yield from value
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        yield from vars(value).values()


def _is_torch_module(value: object) -> bool:
    return callable(getattr(value, "parameters", None)) and callable(
        getattr(value, "buffers", None)
    )


def _on_gpu(value: Any) -> bool:
    if getattr(value, "is_cuda", False) is True:
        return True
    device = getattr(value, "device", None)
    kind = getattr(device, "type", device)
    return isinstance(kind, str) and kind.startswith(("cuda", "gpu"))
