"""Loading NVML (``pynvml`` from nvidia-ml-py, the ``nvidia`` extra), once for
the agent and the guard alike.

A leaf: the agent may not import the guard nor the guard the agent, and
both read GPUs. ``pynvml`` is imported only when asked for, through
``sys.modules`` (where the tests put a fake with the same functions); without
it there are no GPUs, never an error.
"""

from __future__ import annotations

import importlib
from enum import Enum
from typing import Any

NvmlModule = Any
"""``pynvml`` or an object with the same functions (the tests' fake).

Typed ``Any`` on purpose: pynvml ships no type information, and its results
are ctypes values whose fields are read by name; every value crossing this
boundary is converted with ``int``/``str`` straight away."""


class _Auto(Enum):
    AUTO = "auto"


AUTO = _Auto.AUTO
"""Default for an ``nvml`` argument: import ``pynvml`` if installed, else run
without GPUs."""

NvmlChoice = NvmlModule | None | _Auto
"""An ``nvml`` argument: a module, ``None`` (no GPUs) or ``AUTO``."""


def load_nvml() -> NvmlModule | None:
    """``pynvml`` when the ``nvidia`` extra is installed, else ``None``."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def nvml_text(value: object) -> str:
    """NVML strings: ``bytes`` from pynvml < 11.5, ``str`` after."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
