from __future__ import annotations

from pathlib import Path

import pytest

from apportion.guard import ProfileFileError, Profiles, Requirement, UnknownProfile
from apportion.guard.profiles import as_requirement

MUSICGEN = {"facebook/musicgen-medium": {"memory": "6Gi", "gpu_memory": "12Gi"}}


def test_profiles_parse_quantities_once() -> None:
    profiles = Profiles(MUSICGEN)
    req = profiles.get("facebook/musicgen-medium")
    assert req.vector == {"memory": 6 * 2**30, "gpu_memory": 12 * 2**30}
    assert req.to_dict() == {
        "name": "facebook/musicgen-medium",
        "resources": {"memory": "6Gi", "gpu_memory": "12Gi"},
    }


def test_unknown_profile_lists_known_names() -> None:
    with pytest.raises(UnknownProfile) as err:
        Profiles(MUSICGEN).get("llama")
    assert err.value.message == (
        "no requirement profile named 'llama' (known: facebook/musicgen-medium)"
    )


def test_load_json_file(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text('{"small": {"memory": "512Mi", "cpu": "500m"}}')
    assert Profiles.from_file(path).to_dict() == {"small": {"memory": "512Mi", "cpu": "500m"}}


def test_load_toml_file_with_profiles_table(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text('[profiles."facebook/musicgen-medium"]\nmemory = "6Gi"\ngpu_memory = "12Gi"\n')
    assert Profiles.from_file(path).to_dict() == {
        "facebook/musicgen-medium": {"memory": "6Gi", "gpu_memory": "12Gi"}
    }


def test_bad_file_shape_is_a_profile_file_error(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text('{"small": "512Mi"}')
    with pytest.raises(ProfileFileError):
        Profiles.from_file(path)


def test_missing_file_is_a_profile_file_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileFileError):
        Profiles.from_file(tmp_path / "nope.json")


def test_mapping_and_requirement_resolve() -> None:
    profiles = Profiles()
    assert profiles.resolve({"memory": "1Ki"}) == Requirement(None, {"memory": 1024})
    req = Requirement("x", {"cpu": 500})
    assert profiles.resolve(req) is req
    assert as_requirement({"memory": 0}).vector == {}
    assert Requirement(None, {"memory": 1024, "cpu": 500}).describe() == "{memory=1Ki, cpu=500m}"
