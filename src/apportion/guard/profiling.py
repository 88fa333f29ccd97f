"""Opt-in profiler for a block of code: where the time went (cProfile, or
pyinstrument when installed) and which lines allocated memory (tracemalloc),
written as a text or HTML report.

    with profile_block("report.html") as report:
        handle_one_request()
    print(report.text)

Profiling slows the block down several times; use it on demand, not on
every request.
"""

from __future__ import annotations

import contextlib
import cProfile
import html
import importlib
import io
import pstats
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from apportion.core.resources import format_human

Engine = Literal["auto", "cprofile", "pyinstrument"]


@dataclass(slots=True)
class ProfileReport:
    """Filled in when the block ends."""

    engine: str = ""
    wall_seconds: float = 0.0
    text: str = ""
    html: str = ""
    memory_top: list[str] = field(default_factory=list)
    memory_peak: int | None = None
    path: Path | None = None


def _pyinstrument() -> Any | None:
    try:
        return importlib.import_module("pyinstrument")
    except ImportError:
        return None


@contextlib.contextmanager
def profile_block(
    output: str | Path | None = None,
    *,
    engine: Engine = "auto",
    memory: bool = True,
    top: int = 25,
) -> Iterator[ProfileReport]:
    """Profile the ``with`` block; write the report to ``output`` (HTML when
    it ends in ``.html``, else text). ``engine="auto"`` uses pyinstrument when
    it is installed, else cProfile."""
    pyinst = _pyinstrument() if engine in ("auto", "pyinstrument") else None
    if engine == "pyinstrument" and pyinst is None:
        raise ImportError("engine='pyinstrument' needs the pyinstrument package installed")
    report = ProfileReport(engine="pyinstrument" if pyinst is not None else "cprofile")
    started_tracing = memory and not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    before = tracemalloc.take_snapshot() if memory else None
    if memory:
        tracemalloc.reset_peak()
    profiler: Any = pyinst.Profiler() if pyinst is not None else cProfile.Profile()
    t0 = time.perf_counter()
    if pyinst is None:
        profiler.enable()
    else:
        profiler.start()
    try:
        yield report
    finally:
        if pyinst is None:
            profiler.disable()
        else:
            profiler.stop()
        report.wall_seconds = time.perf_counter() - t0
        if before is not None:
            _memory_section(report, before, top)
        if started_tracing:
            tracemalloc.stop()
        _time_section(report, profiler, pyinst is not None, top)
        if output is not None:
            report.path = _write(report, Path(output))


def _memory_section(report: ProfileReport, before: tracemalloc.Snapshot, top: int) -> None:
    report.memory_peak = tracemalloc.get_traced_memory()[1]
    after = tracemalloc.take_snapshot()
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(filters).compare_to(before.filter_traces(filters), "lineno")
    report.memory_top = [
        f"{format_human('memory', max(0, s.size_diff)):>10} "
        f"({s.count_diff:+d} blocks) {s.traceback[0].filename}:{s.traceback[0].lineno}"
        for s in diff[:top]
        if s.size_diff > 0
    ]


def _time_section(report: ProfileReport, profiler: Any, is_pyinst: bool, top: int) -> None:
    head = f"apportion guard profile: {report.wall_seconds:.4f} s wall, engine {report.engine}"
    memory = ""
    if report.memory_peak is not None:
        memory = (
            f"\n\nmemory: traced peak {format_human('memory', report.memory_peak)}; "
            "top growth by line:\n" + "\n".join(report.memory_top or ["(none)"])
        )
    if is_pyinst:
        timing = str(profiler.output_text(unicode=False, color=False))
        report.html = str(profiler.output_html())
    else:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
        timing = out.getvalue()
    report.text = f"{head}\n\n{timing}{memory}\n"
    if not report.html:
        report.html = _as_html(head, report.text)


def _as_html(title: str, text: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(text)}</pre></body></html>\n"
    )


def _write(report: ProfileReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = report.html if path.suffix.lower() in (".html", ".htm") else report.text
    path.write_text(body, encoding="utf-8")
    return path
