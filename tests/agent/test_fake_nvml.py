"""The fake NVML must keep matching the real bindings: same function names
and parameters, same constants, same error classes and messages.

Runs where nvidia-ml-py is installed (``pip install -e '.[nvidia]'``); it
needs no GPU, only the Python module."""

from __future__ import annotations

import inspect

import pytest

from agent.fake_nvml import FakeNvml

pynvml = pytest.importorskip("pynvml")


def fake_functions() -> list[str]:
    return [n for n in dir(FakeNvml) if n.startswith("nvml") and callable(getattr(FakeNvml, n))]


@pytest.mark.parametrize("name", fake_functions())
def test_function_exists_with_the_same_parameters(name: str) -> None:
    real = getattr(pynvml, name)
    fake = getattr(FakeNvml, name)
    fake_params = list(inspect.signature(fake).parameters)[1:]  # drop self
    assert fake_params == list(inspect.signature(real).parameters)


@pytest.mark.parametrize(
    "name", [n for n in dir(FakeNvml) if n.startswith(("NVML_", "nvmlEventType"))]
)
def test_constants_match(name: str) -> None:
    assert getattr(FakeNvml, name) == getattr(pynvml, name)


@pytest.mark.parametrize("name", [n for n in dir(FakeNvml) if n.startswith("NVMLError_")])
def test_error_classes_match(name: str) -> None:
    fake, real = getattr(FakeNvml, name)(), getattr(pynvml, name)()
    assert (fake.value, str(fake)) == (real.value, str(real))
    assert isinstance(FakeNvml.NVMLError(fake.value), getattr(FakeNvml, name))
