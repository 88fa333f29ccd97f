"""The one status type (``core.reasons``): each helper's ``Reason`` field by
field, a shortage as the API answers it, and a grant's refusal in one line.

Written for the mutants of ``core/reasons.py`` that the placement and ledger
tests let through (docs/testing.md): those only read a refusal's message or
kind, so the helpers' other fields and the refusal's edges went unchecked.
"""

from __future__ import annotations

from apportion.core.errors import SHORTAGES_SHOWN
from apportion.core.reasons import (
    Code,
    Failure,
    Kind,
    Reason,
    not_schedulable,
    refusal,
    short_on_node,
)


def test_a_shortage_without_amounts_or_resource_reads_as_zero_of_nothing() -> None:
    reason = Reason("ResourcesFit", Code.INSUFFICIENT, Kind.BUSY, "short")
    assert reason.shortage() == {
        "node": None, "resource": "", "available": "0", "requested": "0",
        "available_base": 0, "requested_base": 0,
    }


def test_a_failure_of_one_reason_takes_its_code_kind_and_words() -> None:
    reason = short_on_node("n1", "cpu", 1000, 2000)
    failure = Failure.of(reason)
    assert (failure.code, failure.kind, failure.message, failure.reasons) == (
        Code.INSUFFICIENT, Kind.BUSY,
        "Insufficient cpu on node n1: 1 available, 2 requested", (reason,),
    )


def test_a_resource_the_node_does_not_offer_is_never_there() -> None:
    assert short_on_node("n1", "gpu", 0, 2, offered=False) == Reason(
        "ResourcesFit", Code.UNKNOWN_RESOURCE, Kind.NEVER, "node n1 has no gpu",
        "gpu", 2, 0, "n1",
    )


def test_an_unready_node_is_a_condition_of_node_ready() -> None:
    assert not_schedulable("a", "is draining") == Reason(
        "NodeReady", Code.NOT_READY, Kind.CONDITION, "is draining", node="a",
    )
    assert not_schedulable("b", "is down", unhealthy=True) == Reason(
        "NodeReady", Code.UNHEALTHY, Kind.CONDITION, "is down", node="b",
    )


def test_a_refusal_with_no_reasons_says_no_ready_node() -> None:
    assert refusal([]) == Failure(
        Code.INSUFFICIENT, Kind.BUSY, "No ready node can take this request", (),
    )


def test_a_refusal_counts_the_shortages_past_those_shown() -> None:
    assert SHORTAGES_SHOWN == 50
    shown = [short_on_node(f"n{i}", "cpu", 1000, 2000) for i in range(50)]
    exactly = refusal(shown)
    assert (exactly.code, exactly.kind) == (Code.INSUFFICIENT, Kind.BUSY)
    assert exactly.message.startswith("Insufficient cpu on node n0: 1 available, 2 requested; ")
    assert exactly.message.endswith("; Insufficient cpu on node n49: 1 available, 2 requested")
    one_more = refusal([*shown, short_on_node("n50", "cpu", 1000, 2000)])
    assert one_more.message == exactly.message + "; and 1 more"
    assert len(one_more.reasons) == 51


def test_a_refusal_by_unready_nodes_only_takes_the_first_ones_code_and_kind() -> None:
    reasons = [not_schedulable("a", "is draining"),
               not_schedulable("b", "is down", unhealthy=True)]
    assert refusal(reasons) == Failure(
        Code.NOT_READY, Kind.CONDITION, "Node a is draining; Node b is down", tuple(reasons),
    )
    assert refusal(reasons[::-1]).code is Code.UNHEALTHY


def test_a_refusal_with_no_shortage_a_release_would_end_is_not_busy() -> None:
    # Nodes that do not offer the resource at all: waiting would not help.
    none = short_on_node("n1", "gpu", 0, 2, offered=False)
    assert refusal([none]) == Failure(
        Code.UNKNOWN_RESOURCE, Kind.NEVER, "node n1 has no gpu", (none,))
    draining = not_schedulable("a", "is draining")
    assert refusal([draining, none]) == Failure(
        Code.NOT_READY, Kind.CONDITION, "node n1 has no gpu; Node a is draining",
        (draining, none),
    )
    # One node short of what a release would give back makes it busy.
    busy = short_on_node("n2", "gpu", 1, 2)
    assert (refusal([none, busy]).code, refusal([none, busy]).kind) == (
        Code.INSUFFICIENT, Kind.BUSY)
