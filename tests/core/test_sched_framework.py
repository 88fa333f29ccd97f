"""The placement pipeline (``core/scheduling/framework.py``): literal
placements for the paths the cycle tests do not pin down (found by
mutation testing, see docs/testing.md)."""

from __future__ import annotations

from apportion.core.labels import parse_selector
from apportion.core.model import Device, Node, NodeState
from apportion.core.scheduling import Affinity, ClusterState, Job, TaskPlacement, TaskSpec, job
from apportion.core.scheduling.framework import Placer, fit_count
from apportion.core.scheduling.policies import strategy
from apportion.core.scheduling.walkstart import walk_index


def placer(state: ClusterState, name: str = "fifo") -> Placer:
    return Placer(state, strategy(name).options)


def test_a_bucket_of_identical_nodes_takes_full_nodes_and_one_partial() -> None:
    # 8 tasks of 2 cpu on three 6-cpu nodes: two full nodes and one with the
    # last two tasks, in one bulk move and one grant.
    state = ClusterState([Node(f"n{i}", {"cpu": 6000, "memory": 8000}) for i in range(3)])
    r = placer(state).place(job("j", {"cpu": 2000}, count=8))
    assert r.tasks == (
        TaskPlacement("n0", {"cpu": 2000}, {}, 3),
        TaskPlacement("n1", {"cpu": 2000}, {}, 3),
        TaskPlacement("n2", {"cpu": 2000}, {}, 2),
    )
    assert {n: rec.free for n, rec in state.nodes.items()} == {
        "n0": (0, 8000), "n1": (0, 8000), "n2": (2000, 8000)}
    assert {n: rec.jobs for n, rec in state.nodes.items()} == {
        "n0": {"j": 3}, "n1": {"j": 3}, "n2": {"j": 2}}


def test_a_bucket_too_small_for_the_group_is_filled_and_the_rest_goes_elsewhere() -> None:
    # The two 4-cpu nodes take 4 tasks between them (no partial node), the
    # fifth goes to the big node.
    state = ClusterState([Node("a0", {"cpu": 4000}), Node("a1", {"cpu": 4000}),
                          Node("big", {"cpu": 16000})])
    r = placer(state).place(job("j", {"cpu": 2000}, count=5))
    assert r.ok
    assert sorted((t.node, t.count) for t in r.tasks or ()) == [("a0", 2), ("a1", 2), ("big", 1)]
    assert {n: rec.jobs for n, rec in state.nodes.items()} == {
        "a0": {"j": 2}, "a1": {"j": 2}, "big": {"j": 1}}


def test_a_gang_places_its_hardest_group_first() -> None:
    # Spreading, the small tasks placed first would take one cpu of the
    # 4-cpu node and leave the big task nowhere to go; the big group has the
    # larger share of free cpu (4 of 7 against 3 of 7), so it goes first.
    state = ClusterState([Node("a", {"cpu": 4000}), Node("b", {"cpu": 3000})])
    gang = Job("g", (TaskSpec({"cpu": 1000}, 3), TaskSpec({"cpu": 4000}, 1)), gang=True)
    r = placer(state, "spread").place(gang)
    assert r.failure is None
    assert r.tasks == (
        TaskPlacement("a", {"cpu": 4000}, {}, 1),
        TaskPlacement("b", {"cpu": 1000}, {}, 1),
        TaskPlacement("b", {"cpu": 1000}, {}, 1),
        TaskPlacement("b", {"cpu": 1000}, {}, 1),
    )


def test_hardness_weighs_a_group_by_its_task_count() -> None:
    # The group of two 3-cpu tasks asks for 6 of 9 free cpu, the 2-cpu task
    # for 2 of 9: the group goes first (per task, 1.5 of 9 each, it would
    # not). Packed first, the 2-cpu task would take the tighter 4-cpu node
    # and leave the second 3-cpu task nowhere.
    state = ClusterState([Node("a", {"cpu": 5000}), Node("b", {"cpu": 4000})])
    gang = Job("g", (TaskSpec({"cpu": 2000}, 1), TaskSpec({"cpu": 3000}, 2)), gang=True)
    r = placer(state).place(gang)
    assert r.failure is None
    assert [(t.node, t.resources["cpu"], t.count) for t in r.tasks or ()] == [
        ("b", 3000, 1), ("a", 3000, 1), ("a", 2000, 1)]


def test_hardness_is_a_share_of_what_is_free_of_each_resource() -> None:
    # The GPU task asks for the only free GPU (a share of 1), the three
    # 1-cpu tasks for half the free cpu: the GPU task goes first, to the GPU
    # node. Packed first, the cpu tasks would fill the GPU node's cpu.
    state = ClusterState([Node("g", {"cpu": 2000, "gpu": 1}), Node("c", {"cpu": 4000})])
    gang = Job("g", (TaskSpec({"cpu": 1000}, 3), TaskSpec({"cpu": 1000, "gpu": 1}, 1)),
               gang=True)
    r = placer(state).place(gang)
    assert r.failure is None
    assert [(t.node, t.resources, t.count) for t in r.tasks or ()] == [
        ("g", {"cpu": 1000, "gpu": 1}, 1), ("g", {"cpu": 1000}, 1), ("c", {"cpu": 1000}, 2)]


def _db_on_a() -> tuple[ClusterState, Job]:
    state = ClusterState([Node(n, {"cpu": 4000}) for n in ("a", "b", "c")])
    state.start(job("db", {"cpu": 1000}, name="db"), [TaskPlacement("a", {"cpu": 1000})], 0.0)
    apart = job("db2", {"cpu": 1000}, name="db",
                anti_affinity=(Affinity(parse_selector("name=db"), target="job", required=True),))
    return state, apart


def test_preferred_nodes_are_filled_first_skipping_unknown_and_refusing_ones() -> None:
    state, apart = _db_on_a()
    assert placer(state).place(apart).tasks == (TaskPlacement("b", {"cpu": 1000}, {}, 1),)
    # "gone" is no node, "a" runs a db: the first preferred node left is c.
    state, apart = _db_on_a()
    r = placer(state).place(apart, prefer=("gone", "a", "c"))
    assert r.tasks == (TaskPlacement("c", {"cpu": 1000}, {}, 1),)


def test_a_preferred_node_keeps_to_its_limit() -> None:
    state = ClusterState([Node("a", {"cpu": 4000}), Node("b", {"cpu": 4000})])
    r = placer(state).place(job("j", {"cpu": 1000}, count=3),
                            limits={"a": {"cpu": 1000}}, prefer=("a",))
    assert r.tasks == (TaskPlacement("a", {"cpu": 1000}, {}, 1),
                       TaskPlacement("b", {"cpu": 1000}, {}, 2))


def test_fits_on_answers_for_one_node() -> None:
    state = ClusterState([Node("small", {"cpu": 1000}), Node("big", {"cpu": 8000})])
    p = placer(state)
    two = job("t", {"cpu": 2000})
    assert p.fits_on(two, "big")
    assert not p.fits_on(two, "small")  # its class can never hold the task
    assert not p.fits_on(two, "nowhere")
    # A node filter that reads the job (required anti-affinity) runs too.
    sel = parse_selector("name=db")
    db = job("db", {"cpu": 1000}, name="db")
    state.start(db, [TaskPlacement("big", {"cpu": 1000})], 0.0)
    apart = job("db2", {"cpu": 1000}, name="db",
                anti_affinity=(Affinity(sel, target="job", required=True),))
    assert not p.fits_on(apart, "big")
    assert p.fits_on(apart, "small")


def test_fits_on_a_node_that_is_not_ready_is_false() -> None:
    state = ClusterState([Node("down", {"cpu": 8000}, state=NodeState.DRAINING)])
    assert not placer(state).fits_on(job("t", {"cpu": 1000}), "down")


def test_fits_now_answers_without_placing() -> None:
    state = ClusterState([Node("n", {"cpu": 4000, "memory": 8000})])
    p = placer(state)
    assert p.fits_now(job("fits", {"cpu": 4000}))
    assert not p.fits_now(job("never", {"cpu": 8000}))  # no class holds it
    assert not p.fits_now(job("gpu", {"gpu": 1}))  # no node offers it
    state.start(job("busy", {"cpu": 3000}), [TaskPlacement("n", {"cpu": 3000})], 0.0)
    assert not p.fits_now(job("later", {"cpu": 2000}))  # short in the aggregate
    assert state.nodes["n"].jobs == {"busy": 1}


def test_limits_on_a_node_that_is_not_ready_or_unknown_are_ignored() -> None:
    state = ClusterState([Node("n", {"cpu": 4000}),
                          Node("down", {"cpu": 4000}, state=NodeState.DRAINING)])
    r = placer(state).place(job("j", {"cpu": 1000}, count=3),
                            limits={"down": {"cpu": 0}, "gone": {"cpu": 0}, "n": {"cpu": 2000}})
    # The limit on n leaves room for two tasks: the third has nowhere to go.
    assert not r.ok
    r = placer(state).place(job("j", {"cpu": 1000}, count=2),
                            limits={"down": {"cpu": 0}, "gone": {"cpu": 0}, "n": {"cpu": 2000}})
    assert r.tasks == (TaskPlacement("n", {"cpu": 1000}, {}, 2),)


def test_a_limited_node_of_a_bucket_is_offered_alone_up_to_its_limit() -> None:
    state = ClusterState([Node("a", {"cpu": 4000}), Node("b", {"cpu": 4000})])
    r = placer(state).place(job("j", {"cpu": 1000}, count=6), limits={"a": {"cpu": 2000}})
    assert sorted((t.node, t.count) for t in r.tasks or ()) == [("a", 2), ("b", 4)]
    assert not placer(state).place(job("k", {"cpu": 1000}), limits={"a": {"cpu": 0}}).ok


def test_limits_in_one_bucket_leave_a_per_node_walk_of_the_others_alone() -> None:
    # Required anti-affinity makes the walk look at each node; the limit is
    # on a node of another bucket (another shape).
    state = ClusterState([Node("a", {"cpu": 4000}), Node("b", {"cpu": 8000})])
    state.start(job("db", {"cpu": 1000}, name="db"), [TaskPlacement("a", {"cpu": 1000})], 0.0)
    apart = job("db2", {"cpu": 1000}, name="db",
                anti_affinity=(Affinity(parse_selector("name=db"), target="job", required=True),))
    r = placer(state).place(apart, limits={"a": {"cpu": 3000}})
    assert r.tasks == (TaskPlacement("b", {"cpu": 1000}, {}, 1),)


def test_a_limited_node_is_offered_ahead_of_the_rest_of_its_bucket() -> None:
    # n1, n2 and n4 are one bucket; the limit on n2 (its whole capacity)
    # makes it a candidate of its own, walked before the bucket's others.
    state = ClusterState([Node(f"n{i}", {"cpu": c})
                          for i, c in enumerate((4000, 2000, 2000, 4000, 2000))])
    r = placer(state).place(job("j", {"cpu": 1000}, count=2, gang=False),
                            limits={"n2": {"cpu": 2000}})
    assert r.tasks == (TaskPlacement("n2", {"cpu": 1000}, {}, 2),)


def test_a_bucket_whose_nodes_are_all_limited_offers_each_alone() -> None:
    state = ClusterState([Node("a", {"cpu": 4000}), Node("b", {"cpu": 4000})])
    r = placer(state).place(job("j", {"cpu": 1000}, count=2),
                            limits={"a": {"cpu": 1000}, "b": {"cpu": 1000}})
    assert r.tasks == (TaskPlacement("a", {"cpu": 1000}, {}, 1),
                       TaskPlacement("b", {"cpu": 1000}, {}, 1))


def test_the_rest_of_a_bucket_with_a_full_limited_node_is_offered() -> None:
    # a's limit of nothing keeps it in the bucket: b is offered as the rest.
    state = ClusterState([Node("a", {"cpu": 4000}), Node("b", {"cpu": 4000})])
    r = placer(state).place(job("j", {"cpu": 1000}), limits={"a": {"cpu": 0}})
    assert r.tasks == (TaskPlacement("b", {"cpu": 1000}, {}, 1),)


def test_a_per_node_walk_keeps_to_limits() -> None:
    # Anti-affinity has the walk look at each node of the bucket of five;
    # n0's limit of no cpu (and nothing said of memory) rules it out.
    state = ClusterState([Node(f"n{i}", {"cpu": 4000, "memory": 8000}) for i in range(5)])
    apart = job("db", {"cpu": 1000}, name="db",
                anti_affinity=(Affinity(parse_selector("name=db"), target="job", required=True),))
    r = placer(state).place(apart, limits={"n0": {"cpu": 0}})
    assert r.tasks == (TaskPlacement("n1", {"cpu": 1000}, {}, 1),)


def test_a_limit_below_zero_is_no_room_and_the_job_goes_elsewhere() -> None:
    # An overdrawn backfill limit (EASY charges every backfilled job to the
    # head's nodes) offers no candidate, as a limit of zero does.
    for name in ("fifo", "spread"):
        state = ClusterState([Node("big", {"cpu": 4000}), Node("small", {"cpu": 2000})])
        state.start(job("hog", {"cpu": 1000}), [TaskPlacement("big", {"cpu": 1000})], 0.0)
        state.start(job("s", {"cpu": 1000}), [TaskPlacement("small", {"cpu": 1000})], 0.0)
        r = placer(state, name).place(job("long", {"cpu": 1000}), limits={"big": {"cpu": -1}})
        assert r.tasks == (TaskPlacement("small", {"cpu": 1000}, {}, 1),), name


def test_fits_now_runs_the_node_filters_a_job_needs() -> None:
    state, apart = _db_on_a()
    only_a = ClusterState([Node("a", {"cpu": 4000})])
    only_a.start(job("db", {"cpu": 1000}, name="db"), [TaskPlacement("a", {"cpu": 1000})], 0.0)
    assert placer(state).fits_now(apart)  # b and c run no db
    assert not placer(only_a).fits_now(apart)


def test_a_limit_that_names_only_some_resources_leaves_the_others_free() -> None:
    state = ClusterState([Node(n, {"cpu": 4000, "memory": 8000}) for n in ("a", "b")])
    r = placer(state).place(job("j", {"cpu": 1000, "memory": 1000}, count=2),
                            limits={"a": {"cpu": 2000}}, prefer=("a",))
    assert r.tasks == (TaskPlacement("a", {"cpu": 1000, "memory": 1000}, {}, 2),)


def test_fit_count_is_the_smallest_ratio_of_the_requested_resources() -> None:
    assert fit_count((10, 5), (3, 0)) == 3  # a resource not asked for bounds nothing
    assert fit_count((10, 5), (3, 2)) == 2
    assert fit_count((10, 5), (2, 3)) == 1
    assert fit_count((4, 100), (1, 1)) == 4
    assert fit_count((100, 4), (1, 1)) == 4
    assert fit_count((7,), (7,)) == 1
    assert fit_count((6,), (7,)) == 0
    assert fit_count((10, 1), (1, 2)) == 0
    assert fit_count((1, 10), (2, 1)) == 0
    assert fit_count((-4, 10), (2, 1)) == 0  # a node whose capacity shrank under its jobs
    assert fit_count((0, 0), (0, 0)) == 0  # nothing asked: no bound, read as none


def test_walk_index_takes_the_resource_fewest_buckets_hold_enough_of() -> None:
    state = ClusterState(
        [Node(f"c{i}", {"cpu": (i + 1) * 1000, "memory": (5 - i) * 1000}) for i in range(5)]
        + [Node("g", {"cpu": 8000, "memory": 1000, "gpu": 2})])
    cpu, memory, gpu = state.index("cpu"), state.index("memory"), state.index("gpu")

    def walk(resources: dict[str, int]) -> tuple[object, int, int]:
        index, k, i, walked = walk_index(state, TaskSpec(resources))
        assert index is None or index is state.index(walked)
        return index, k, i

    assert walk({"cpu": 2000}) == (cpu, 0, 1)
    assert walk({"cpu": 0}) == (cpu, 0, 0)
    assert walk({"cpu": 2000, "gpu": 1}) == (gpu, 0, 0)
    assert walk({"gpu": 1, "cpu": 2000}) == (gpu, 0, 0)
    assert walk({"cpu": 3000, "memory": 3000}) == (memory, 0, 3)  # 3 against 4
    # a tie (3 and 3) goes to the first resource asked for
    assert walk({"cpu": 4000, "memory": 3000}) == (cpu, 0, 3)
    assert walk({"memory": 3000, "cpu": 4000}) == (memory, 0, 3)
    # no node offers it, or none has enough of one resource
    assert walk({"tpu": 1}) == (None, 0, 0)
    assert walk({"cpu": 9000}) == (None, 0, 0)
    assert walk({"cpu": 1000, "gpu": 3}) == (None, 0, 0)
    assert walk({"gpu": 3, "cpu": 1000}) == (None, 0, 0)  # none of the first: done


def test_walk_index_starts_in_a_later_block() -> None:
    state = ClusterState([Node(f"c{i}", {"cpu": (i + 1) * 1000, "memory": 1000})
                          for i in range(40)])
    cpu = state.index("cpu")
    assert cpu is not None and [len(b) for b in cpu.blocks] == [16, 24]
    assert walk_index(state, TaskSpec({"cpu": 25000})) == (cpu, 1, 8, "cpu")
    assert walk_index(state, TaskSpec({"memory": 1000, "cpu": 25000})) == (cpu, 1, 8, "cpu")
    assert walk_index(state, TaskSpec({"cpu": 41000}))[:3] == (None, 0, 0)


def hundred(poor: range, *, used: bool) -> ClusterState:
    """Nodes c001..c100 with i cores and 64Gi each (the cpu index in six
    blocks: 1-16, 17-32, 33-48, 49-64, 65-80, 81-100); those in ``poor`` have
    1Gi of memory, or 63Gi of their 64Gi taken by a running job (``used``)."""
    gi = 2**30
    state = ClusterState([
        Node(f"c{i:03d}", {"cpu": i * 1000, "memory": (1 if i in poor and not used else 64) * gi})
        for i in range(1, 101)])
    if used:
        for i in poor:
            state.start(job(f"u{i}", {"memory": 63 * gi}),
                        [TaskPlacement(f"c{i:03d}", {"memory": 63 * gi})], 0.0)
    return state


def test_the_walk_skips_blocks_short_of_another_resource_and_goes_on() -> None:
    def first(state: ClusterState, name: str, cores: int, count: int = 1) -> list[str]:
        r = placer(state, name).place(job("j", {"cpu": cores * 1000, "memory": 8 * 2**30},
                                          count=count))
        return [t.node for t in r.tasks or ()]

    cpu = hundred(range(0), used=False).index("cpu")
    assert cpu is not None
    assert [(b[0][2][0], b[-1][2][0]) for b in cpu.blocks] == [
        (1000, 16000), (17000, 32000), (33000, 48000), (49000, 64000), (65000, 80000),
        (81000, 100000)]
    for used in (False, True):  # refused by class, or by the block's bound
        # packing, from the first block with 60 cores up: 60-80 are short
        assert first(hundred(range(60, 81), used=used), "fifo", 60) == ["c081"]
        # spreading, from the top down: 65-100 are short
        assert first(hundred(range(65, 101), used=used), "spread", 60) == ["c064"]
        # spreading past one short block only (a walk that skipped every other
        # block would pass 65-80 too)
        assert first(hundred(range(81, 101), used=used), "spread", 60) == ["c080"]
    plain = hundred(range(0), used=False)
    assert first(plain, "spread", 10, count=3) == ["c100", "c099", "c098"]
    # the first block walked is entered at the first node with enough
    assert first(hundred(range(0), used=False), "fifo", 10) == ["c010"]
    assert first(hundred(range(0), used=False), "fifo", 20) == ["c020"]


def test_a_block_whose_bound_is_exactly_the_request_is_walked() -> None:
    gi = 2**30

    def first(state: ClusterState, cores: int, memory: int, name: str = "fifo") -> list[str]:
        r = placer(state, name).place(job("j", {"cpu": cores * 1000, "memory": memory * gi}))
        return [t.node for t in r.tasks or ()]

    # 60-80 have 1Gi free: their blocks' bounds are stale (loose) until a walk
    # tightens them; then 1Gi is the bound of the block 65-80
    assert first(hundred(range(60, 81), used=True), 65, 1) == ["c065"]  # stale: tightened
    state = hundred(range(60, 81), used=True)
    assert first(state, 60, 8) == ["c081"]
    assert first(state, 60, 8) == ["c082"]  # the bound is exact now: the block is skipped
    assert first(state, 65, 1) == ["c065"]  # exact, and exactly enough
    state = hundred(range(65, 101), used=True)
    assert first(state, 60, 8, "spread") == ["c064"]
    assert first(state, 70, 1, "spread") == ["c100"]


def test_a_per_node_walk_scores_up_to_the_limit_and_enough_room() -> None:
    # The job prefers the node running db (b): the walk offers nodes one by
    # one, tightest first, and stops once it has ``limit`` (4) candidates
    # with room for every task left; b is found only if the walk gets to it.
    near = (Affinity(parse_selector("name=db"), target="job", weight=5),)

    def placed(nodes: list[tuple[str, int]], count: int) -> list[tuple[str, int]]:
        state = ClusterState([Node(n, {"cpu": c * 1000}) for n, c in nodes])
        state.start(job("db1", {"cpu": 1000}, name="db"), [TaskPlacement("b", {"cpu": 1000})],
                    0.0)
        r = placer(state).place(job("j", {"cpu": 1000}, count=count, affinity=near))
        return [(t.node, t.count) for t in r.tasks or ()]

    four = [("n1", 4), ("n2", 4), ("n3", 4), ("n4", 4), ("b", 8)]
    assert placed([("a", 4), ("b", 8)], 1) == [("b", 1)]  # two candidates, not one
    assert placed(four, 1) == [("n1", 1)]  # four candidates, not five
    # room counted over the candidates: 16 for 10 tasks after four (b not
    # scored); then three with room for 12, so b is walked to, and wins
    assert placed(four, 10) == [("n1", 4), ("b", 6)]
    # room for exactly the 16 tasks after four candidates: enough
    assert placed(four, 16) == [("n1", 4), ("b", 7), ("n2", 4), ("n3", 1)]


def test_a_bucket_of_identical_gpu_nodes_takes_its_devices_task_by_task() -> None:
    # Three tasks of one GPU on identical two-GPU nodes: one bucket; each
    # task holds its own GPU, and the second node takes only the third task.
    gi = 2**30
    devices = tuple(Device(f"GPU-{k}", "A100", 40 * gi) for k in range(2))
    state = ClusterState([Node(f"g{i}", {"cpu": 8000}, devices={"gpu": devices})
                          for i in range(3)])
    r = placer(state).place(job("j", {"cpu": 1000, "gpu": 1}, count=3))
    assert r.tasks == (
        TaskPlacement("g0", {"cpu": 1000, "gpu": 1}, {"gpu": ("GPU-0",)}, 1),
        TaskPlacement("g0", {"cpu": 1000, "gpu": 1}, {"gpu": ("GPU-1",)}, 1),
        TaskPlacement("g1", {"cpu": 1000, "gpu": 1}, {"gpu": ("GPU-0",)}, 1),
    )
    assert {n: rec.free for n, rec in state.nodes.items()} == {
        "g0": (6000, 0), "g1": (7000, 1), "g2": (8000, 2)}


def test_a_bucket_walk_scores_up_to_the_limit_and_enough_room() -> None:
    # b (zone=x, preferred) wins whenever it is scored; the walk offers
    # buckets tightest first and stops at 4 candidates with room for the rest.
    near = (Affinity(parse_selector("zone=x"), weight=5),)

    def placed(nodes: list[tuple[str, int]], count: int) -> list[tuple[str, int]]:
        state = ClusterState([Node(n, {"cpu": c * 1000}, labels={"zone": "x"} if n == "b" else {})
                              for n, c in nodes])
        r = placer(state).place(job("j", {"cpu": 1000}, count=count, affinity=near))
        return [(t.node, t.count) for t in r.tasks or ()]

    one = [("n1", 4), ("n2", 5), ("n3", 6), ("n4", 7), ("b", 8)]
    assert placed([("n1", 4), ("b", 8)], 1) == [("b", 1)]
    assert placed(one, 1) == [("n1", 1)]  # four candidates, not five
    # room for exactly 22 after four: b is not scored
    assert placed(one, 22) == [("n1", 4), ("n2", 5), ("n3", 6), ("n4", 7)]
    # room for 22 of 23: the walk goes on to b
    assert placed(one, 23) == [("b", 8), ("n1", 4), ("n2", 5), ("n3", 6)]
    # buckets of two: room counted per node of the bucket (8 + 10 + 12 + 14)
    two = [(f"n{k}{s}", k + 3) for k in range(1, 5) for s in "ab"] + [("b", 8)]
    assert placed(two, 12) == [("n1a", 4), ("n1b", 4), ("n2a", 4)]
    assert placed(two, 20) == [("n1a", 4), ("n1b", 4), ("n2a", 5), ("n2b", 5), ("n3a", 2)]


def test_a_group_refused_by_the_aggregate_or_by_the_walk_says_which() -> None:
    # 9 cpu asked, 8 free in all: the aggregate check answers, nothing placed
    state = ClusterState([Node("a", {"cpu": 4000}), Node("b", {"cpu": 4000})])
    r = placer(state).place(job("g", {"cpu": 3000}, count=3))
    assert r.failure is not None and r.failure.message == (
        "needs 9 cpu in all; 8 free on ready nodes (largest free on any ready node: 4)")
    # 6 of 8 free, but after a takes one task no node has 3: the walk answers
    state = ClusterState([Node("a", {"cpu": 4000}), Node("b", {"cpu": 2000}),
                          Node("c", {"cpu": 2000})])
    r = placer(state).place(job("g", {"cpu": 3000}, count=2))
    assert r.failure is not None and r.failure.message == (
        "no room now for 1 more task(s): needs 3 cpu; largest free on any ready node: 2")
    assert state.free_total() == {"cpu": 8000}
