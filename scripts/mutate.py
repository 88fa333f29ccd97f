"""Mutation testing with mutmut: ``./run mutate [PATH ...]`` (see docs/testing.md).

mutmut reads one fixed target set from ``[tool.mutmut]`` in pyproject.toml;
this driver sets it from the command line instead, so one command can test
``core/scheduling`` today and ``service`` tomorrow. Each PATH (``core/ledger.py``,
``core/scheduling``, ``src/apportion/service``) is mutated and checked against
the tests of its top package (``tests/core`` for ``core/...``), which keeps a
run to the fast tests that can kill its mutants. With no PATH it runs the
issue 15 targets. Not in CI: it takes tens of minutes.

    ./run mutate [PATH ...] [-- NAME ...]
    ./run mutate --report [PATH ...]

    NAME          test only the mutants whose names match these globs
                  (``apportion.core.ledger.*``); results add up in mutants/
                  across runs over the same PATHs, so a long set can be
                  tested a module at a time
    --report      print the table of the last runs, testing nothing
    MUTATE_JOBS   mutants tested at once (default: the CPU count)

It prints a killed/survived table per module, and the surviving mutants
(``.venv/bin/mutmut show NAME`` prints one's diff).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from mutmut import configuration
from mutmut.__main__ import cli
from mutmut.mutation.data import SourceFileMutationData
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

DEFAULT = ("core/scheduling", "core/ledger.py", "core/resources.py")
PKG = Path("src/apportion")
STAMP = Path("mutants/.apportion-targets")
PROFILE = "--hypothesis-profile=mutation"
COLUMNS = ("killed", "survived", "timeout", "no tests", "suspicious", "skipped", "not checked")


def target(arg: str) -> tuple[str, str]:
    """The only_mutate pattern for one PATH and the tests that go with it."""
    rel = Path(arg.rstrip("/"))
    for prefix in (PKG, Path("apportion")):
        if rel.is_relative_to(prefix):
            rel = rel.relative_to(prefix)
    path = PKG / rel
    if not path.exists():
        sys.exit(f"mutate: PATH {arg!r} is neither a file nor a folder under {PKG}/")
    tests = Path("tests") / rel.parts[0]
    pattern = str(path / "*") if path.is_dir() else str(path)
    return pattern, str(tests) if tests.is_dir() else "tests"


def configure(args: list[str]) -> list[str]:
    pairs = [target(a) for a in (args or DEFAULT)]
    patterns = [p for p, _ in pairs]
    cfg = configuration.config()
    cfg.only_mutate = patterns
    cfg.pytest_add_cli_args_test_selection = sorted({t for _, t in pairs})
    # Fewer Hypothesis examples per mutant (the profile is in tests/conftest.py):
    # the property tests would otherwise cost up to a minute a mutant.
    if PROFILE not in cfg.pytest_add_cli_args:
        cfg.pytest_add_cli_args = [*cfg.pytest_add_cli_args, PROFILE]
    # mutants/ caches results per mutant; those of another target set would
    # be reported with this one, so a new set starts from scratch.
    key = "\n".join(patterns + cfg.pytest_add_cli_args_test_selection)
    if STAMP.exists() and STAMP.read_text() != key:
        shutil.rmtree("mutants")
    Path("mutants").mkdir(exist_ok=True)
    STAMP.write_text(key)
    return patterns


def report() -> None:
    """Mutants by status, per module, as a Markdown table; then survivors."""
    by_module: dict[str, Counter[str]] = {}
    survivors: list[str] = []
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        if not data.exit_code_by_key:
            continue
        counts = by_module.setdefault(str(path.relative_to(PKG)), Counter())
        for name, code in sorted(data.exit_code_by_key.items()):
            status = status_by_exit_code[code]
            counts[status] += 1
            if status == "survived":
                survivors.append(name)
    total: Counter[str] = Counter()
    print("\n| module | " + " | ".join(COLUMNS) + " | total | killed % |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for module, counts in sorted(by_module.items()):
        total.update(counts)
        print(_row(module, counts))
    print(_row("**all**", total))
    print(f"\n{len(survivors)} survived:")
    for name in survivors:
        print(f"    {name}")


def _row(module: str, counts: Counter[str]) -> str:
    n = sum(counts.values())
    # A timeout is a kill too (the mutant made the tests hang), as mutmut counts it.
    share = 100.0 * (counts["killed"] + counts["timeout"]) / n if n else 0.0
    cells = " | ".join(str(counts[c]) for c in COLUMNS)
    return f"| {module} | {cells} | {n} | {share:.1f} |"


def main() -> None:
    args = sys.argv[1:]
    names: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, names = args[:at], args[at + 1 :]
    if args and args[0] == "--report":
        configure(args[1:])
        report()
        return
    configure(args)
    jobs = os.environ.get("MUTATE_JOBS") or str(os.cpu_count() or 1)
    cli(["run", "--max-children", jobs, *names], standalone_mode=False)
    report()


if __name__ == "__main__":
    main()
