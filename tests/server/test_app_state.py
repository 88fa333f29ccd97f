"""The application's state: starlette's ``State`` with its names also plain
attributes (read on every grant without ``__getattr__``), behaving as
starlette's does."""

from __future__ import annotations

import pytest
from starlette.datastructures import State

from apportion.server.app import PlainState, create_app


@pytest.mark.parametrize("kind", [State, PlainState])
def test_plain_state_behaves_as_starlettes(kind: type[State]) -> None:
    state = kind()
    state.ctx = 1
    state["edge"] = 2
    assert (state.ctx, state["ctx"], state.edge, state["edge"]) == (1, 1, 2, 2)
    assert list(state) == ["ctx", "edge"] and len(state) == 2
    state.ctx = 3
    assert state.ctx == state["ctx"] == 3
    del state.ctx
    del state["edge"]
    assert list(state) == []
    for name in ("ctx", "edge"):
        with pytest.raises(AttributeError):
            getattr(state, name)
        assert getattr(state, name, None) is None


def test_the_app_state_is_plain() -> None:
    app = create_app()
    assert type(app.state) is PlainState
    app.state.ctx = "x"
    assert vars(app.state)["ctx"] == "x"  # found without __getattr__


def test_plain_state_refuses_its_own_store_as_a_name() -> None:
    state = PlainState()
    state.ctx = 1
    for write in (lambda: setattr(state, "_state", {}), lambda: state.__setitem__("_state", {}),
                  lambda: delattr(state, "_state"), lambda: state.__delitem__("_state")):
        with pytest.raises(AttributeError):
            write()
    assert state.ctx == state["ctx"] == 1 and list(state) == ["ctx"]
