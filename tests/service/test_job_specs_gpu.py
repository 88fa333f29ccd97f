"""``with_gpu_shares``: a share of a GPU written as the slots the ledger grants."""

from __future__ import annotations

import pytest

from apportion.exceptions import InvalidInput
from apportion.service.job_specs import job_from_spec, with_gpu_shares


def test_a_quarter_gpu_becomes_one_slot_of_gpus_split_in_four() -> None:
    spec = {"resources": {"cpu": "1", "gpu": 0.25}, "constraints": ["zone=a"]}
    out = with_gpu_shares(spec, {4})
    assert out == {
        "resources": {"cpu": "1", "gpu.shares": 1},
        "constraints": ["zone=a", "gpu.shares=4"],
        "gpu_share": {"asked": "0.25", "shares": 1, "split": 4, "percent": 25},
    }
    assert spec["resources"] == {"cpu": "1", "gpu": 0.25}  # the caller's spec is left alone
    job = job_from_spec(out, job_id="j", submit_time=0.0, owner=None)
    assert job.tasks[0].resources == {"cpu": 1000, "gpu.shares": 1}
    assert [str(d) for d in job.constraints.devices] == ["gpu.shares=4"]


def test_half_a_gpu_takes_the_smallest_split_it_fits() -> None:
    out = with_gpu_shares({"tasks": [{"resources": {"gpu": "0.5"}, "count": 2}]}, {2, 4})
    assert out["tasks"] == [{"resources": {"gpu.shares": 1}, "count": 2}]
    assert out["constraints"] == ["gpu.shares=2"]


def test_whole_gpus_and_specs_without_gpus_are_unchanged() -> None:
    for spec in ({"resources": {"gpu": 2}}, {"resources": {"cpu": "1"}}, {"resources": "auto"}):
        assert with_gpu_shares(spec, {4}) == spec


def test_whole_and_shared_gpus_in_one_job_are_refused() -> None:
    spec = {"tasks": [{"resources": {"gpu": 1}}, {"resources": {"gpu": 0.25}}]}
    with pytest.raises(
        InvalidInput,
        match=r"resources\.gpu: a job asks for whole GPUs or for one size of GPU share, not both",
    ):
        with_gpu_shares(spec, {4})
