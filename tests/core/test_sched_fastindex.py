"""The cluster state builds its free indexes from the class ``fastindex``
chose: the compiled one where it was built, the pure one where it was not or
is hidden (``APPORTION_NO_NATIVE=1``, ``tests/conftest.py``)."""

from __future__ import annotations

import os

from apportion.core.model import Node
from apportion.core.scheduling import ClusterState, fastindex
from apportion.core.scheduling.freeindex import FreeIndex


def test_the_state_indexes_with_the_chosen_class() -> None:
    state = ClusterState([Node("n1", {"cpu": 4000, "memory": 2**30})])
    index = state.index("cpu")
    assert type(index) is fastindex.Index
    assert isinstance(index, FreeIndex)  # the compiled class is the pure one's subclass
    if os.environ.get("APPORTION_NO_NATIVE") == "1":
        assert not fastindex.NATIVE
        assert type(index) is FreeIndex
    assert list(index) == [(4000, 0, (4000, 2**30), 0)]
