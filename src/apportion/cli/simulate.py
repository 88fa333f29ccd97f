"""``apportion simulate TRACE``: replay a workload through the scheduler.

Reads the trace (``apportion.traces``), replays it with the pure engine
(``apportion.core.simulator``) on a virtual clock, prints the figures, and
with ``--out`` writes them as JSON (and per-job CSV); ``--plot`` draws PNG
charts with matplotlib (an optional extra, imported only then).

The lead registers it on the main app with ``register(app)``.
"""

from __future__ import annotations

import csv
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from apportion.cli.output import LazyConsole, error_object, fail

if TYPE_CHECKING:
    # The scheduler, the simulator and rich's progress bar are imported when
    # a replay runs, not when any other command starts (tests/cli/test_imports.py).
    from rich.console import Console
    from rich.progress import Progress

    from apportion.core.simulator import SimResult
    from apportion.traces import Trace

DEFAULT_COMPARE = "fifo,sjf,fairshare,adaptive"

def _width(stream: Any) -> int | None:
    # Piped output is never cut at Rich's default 80 columns.
    return None if stream.isatty() else 200


out_console: Console = LazyConsole(False, lambda: _width(sys.stdout))  # type: ignore[assignment]
err_console: Console = LazyConsole(True, lambda: _width(sys.stderr))  # type: ignore[assignment]


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to the main ``apportion`` app."""
    app.command("simulate")(simulate_command)


def simulate_command(
    trace: Annotated[Path, typer.Argument(help="SWF (.swf, .swf.gz), JSONL/CSV jobs, or "
                                          "the Philly GPU CSV", exists=True, dir_okay=False)],
    strategy: Annotated[str, typer.Option(help="fifo, priority, fairshare, sjf, sla, cost, "
                                          "affinity, adaptive, binpack, spread")] = "fifo",
    backfill: Annotated[str, typer.Option(help="none, easy or conservative")] = "easy",
    nodes: Annotated[int | None, typer.Option(help="replace the trace's cluster with N "
                                              "identical nodes")] = None,
    node_resources: Annotated[str | None, typer.Option(
        help="resources of each node with --nodes, e.g. cpu=4,memory=16Gi,gpu=8")] = None,
    out: Annotated[Path | None, typer.Option(help="write summary JSON and per-job CSV here")]
    = None,
    plot: Annotated[bool, typer.Option(help="also draw PNG charts into --out "
                                       "(needs matplotlib)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    compare: Annotated[bool, typer.Option(help="run several strategies and backfill modes "
                                          "and print one table")] = False,
    strategies: Annotated[str, typer.Option(help="strategies for --compare")] = DEFAULT_COMPARE,
    backfills: Annotated[str, typer.Option(help="backfill modes for --compare")]
    = "none,easy,conservative",
    limit: Annotated[int | None, typer.Option(help="replay only the first N jobs")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="swf, jsonl, csv or philly "
                                            "(default: from the file)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar on stderr")] = True,
) -> None:
    """Replay TRACE through the scheduler with a virtual clock and report
    waits, bounded slowdown, utilization and makespan."""
    # Here, not at the top: apportion.exceptions re-exports the core's errors,
    # and no other command may pay for the core (tests/cli/test_imports.py).
    from apportion.exceptions import ApportionError

    try:
        loaded = _load(trace, fmt, limit, nodes, node_resources)
        # The trace lives as long as the command: left to the collector, every
        # full collection of the replay walks all its jobs again (4.6 % of
        # Philly's replay). Frozen, it is never walked; freed as before.
        gc.freeze()
        runs = _plan(compare, strategy, backfill, strategies, backfills)
        results, interrupted = _run_all(loaded, runs, progress and not as_json)
    except ApportionError as exc:
        fail(error_object(exc.code, exc.message, None), "[red]error:[/red]", exc.message, 2,
             as_json)
    if interrupted and not results:
        raise typer.Exit(130)
    summary = _summary(loaded, results)
    if as_json:
        sys.stdout.write(json.dumps(summary if compare else summary["runs"][0] | {
            "trace": summary["trace"]}, indent=2) + "\n")
    else:
        _print(loaded, results, compare)
    if out is not None:
        _write(out, summary, results, plot)
    elif plot:
        err_console.print("[yellow]--plot writes into --out DIR; give --out[/yellow]")
    if interrupted:
        err_console.print(f"interrupted: {len(results)} of {len(runs)} runs finished "
                          "(shown above)")
        raise typer.Exit(130)


def _run_all(loaded: Trace, runs: list[tuple[str, str]], show: bool
             ) -> tuple[list[_Run], bool]:
    """The runs in order; on Ctrl-C, the ones that finished (and True), so a
    long comparison still prints what it has."""
    results: list[_Run] = []
    try:
        for s, b in runs:
            results.append(_run(loaded, s, b, show))
    except KeyboardInterrupt:
        return results, True
    return results, False


def _plan(compare: bool, strategy: str, backfill: str, strategies: str, backfills: str
          ) -> list[tuple[str, str]]:
    from apportion.core.scheduling.cycle import BACKFILL_MODES, SchedulerConfig

    names = _split(strategies) if compare else [strategy]
    modes = _split(backfills) if compare else [backfill]
    for name in names:
        SchedulerConfig(strategy=name)  # refuses unknown names with the list
    for mode in modes:
        if mode not in BACKFILL_MODES:
            SchedulerConfig(backfill=mode)
    return [(s, b) for s in names for b in modes]


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _load(path: Path, fmt: str | None, limit: int | None, nodes: int | None,
          node_resources: str | None) -> Trace:
    from apportion.exceptions import ApportionError
    from apportion.traces import parse_resources_text, read_swf, read_trace, uniform_nodes

    override = None
    if nodes is not None or node_resources is not None:
        if nodes is None or node_resources is None:
            raise ApportionError("give --nodes and --node-resources together")
        override = uniform_nodes(nodes, parse_resources_text(node_resources))
    if override is not None and (fmt == "swf" or (fmt is None and ".swf" in path.name)):
        return read_swf(path, limit=limit, nodes=override)
    loaded = read_trace(path, fmt, limit=limit)
    if override is not None:
        loaded.nodes = override
    if not loaded.nodes:
        raise ApportionError(f"{path.name} describes no cluster: give --nodes and "
                             "--node-resources")
    return loaded


class _Run:
    def __init__(self, strategy: str, backfill: str, result: SimResult, wall: float) -> None:
        self.strategy = strategy
        self.backfill = backfill
        self.result = result
        self.wall = wall


def _run(loaded: Trace, strategy: str, backfill: str, show: bool) -> _Run:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from apportion.core.scheduling.cycle import SchedulerConfig
    from apportion.core.simulator import SimConfig, simulate

    config = SimConfig(SchedulerConfig(strategy=strategy, backfill=backfill),
                       primary=loaded.primary)
    label = f"{strategy}+{backfill}"
    start = time.perf_counter()
    if show and err_console.is_terminal:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err_console, transient=True) as bar:
            task = bar.add_task(label, total=len(loaded.jobs))
            result = simulate(loaded.jobs, loaded.nodes, config,
                              progress=_advance(bar, task))
    else:
        result = simulate(loaded.jobs, loaded.nodes, config)
    return _Run(strategy, backfill, result, time.perf_counter() - start)


def _advance(bar: Progress, task: Any) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update


def _summary(loaded: Trace, results: Sequence[_Run]) -> dict[str, Any]:
    runs = []
    for r in results:
        figures = dict(r.result.metrics)
        figures["dropped"] = loaded.dropped_total
        figures["wall_s"] = round(r.wall, 3)
        runs.append({"strategy": r.strategy, "backfill": r.backfill, **figures})
    return {
        "trace": {
            "path": loaded.path,
            "format": loaded.format,
            "nodes": len(loaded.nodes),
            "primary": loaded.primary,
            "jobs_read": len(loaded.jobs) + loaded.dropped_total,
            "jobs": len(loaded.jobs),
            "dropped": dict(loaded.dropped),
            "changed": dict(loaded.changed),
            "notes": loaded.notes,
        },
        "runs": runs,
    }


def _hours(seconds: float | int | None) -> str:
    return "-" if seconds is None else f"{float(seconds) / 3600:.2f}"


def _num(value: float | int | None, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _print(loaded: Trace, results: Sequence[_Run], compare: bool) -> None:
    c = out_console
    c.print(f"[bold]{Path(loaded.path).name}[/bold]: {len(loaded.jobs)} jobs simulated on "
            f"{len(loaded.nodes)} nodes, {loaded.dropped_total} dropped")
    for reason, n in sorted(loaded.dropped.items()):
        c.print(f"  dropped {n}: {reason}")
    for reason, n in sorted(loaded.changed.items()):
        c.print(f"  changed {n}: {reason}")
    for note in loaded.notes:
        c.print(f"  note: {note}")
    from rich.table import Table

    table = Table(title="simulated" if compare else None)
    for col in ("strategy", "backfill", "mean wait h", "median wait h", "p95 wait h",
                "max wait h", "mean bsld", "util", "makespan h", "preempt", "deadline miss",
                "est MAE h", "res moves", "wall s"):
        table.add_column(col, justify="left" if col in ("strategy", "backfill") else "right")
    for r in results:
        m = r.result.metrics
        table.add_row(r.strategy, r.backfill, _hours(m["mean_wait_s"]),
                      _hours(m["median_wait_s"]), _hours(m["p95_wait_s"]),
                      _hours(m["max_wait_s"]), _num(m["mean_bounded_slowdown"]),
                      _num(m["utilization"], 3), _hours(m["makespan_s"]),
                      str(m["preemptions"]), str(m["deadline_misses"]),
                      _hours(m.get("estimate_mae_s")), str(m.get("reservation_moves", "-")),
                      f"{r.wall:.2f}")
    real = results[0].result.metrics if results else {}
    if real.get("real_mean_wait_s") is not None:
        table.add_row("[italic]real log[/italic]", "-", _hours(real["real_mean_wait_s"]), "", "",
                      "", _num(real["real_mean_bounded_slowdown"]), "", "", "", "", "", "", "")
    c.print(table)
    if real.get("real_mean_wait_s") is not None:
        c.print("real log: the waits the site's own scheduler produced (SWF field 3), "
                "for the same jobs")


def _write(out: Path, summary: dict[str, Any], results: Sequence[_Run], plot: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in results:
        with (out / f"jobs-{r.strategy}-{r.backfill}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "queue", "submit", "start", "end", "run", "wait", "size",
                             "preempted", "deadline_missed"])
            for rec in r.result.records:
                writer.writerow([rec.id, rec.queue, rec.submit, rec.start, rec.end, rec.run,
                                 rec.wait, rec.size, rec.preempted, int(rec.deadline_missed)])
    if plot:
        draw(out, results)
    err_console.print(f"wrote {out}")


def draw(out: Path, results: Sequence[_Run]) -> list[Path]:
    """Queue length and utilization over time, and the wait-time CDF per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        from apportion.exceptions import ApportionError

        raise ApportionError("--plot needs matplotlib: pip install matplotlib") from exc
    paths = []
    for name, attr, ylabel in (("queue_length", "series_queue", "jobs waiting"),
                               ("utilization", "series_util", "share of capacity in use")):
        fig, ax = plt.subplots(figsize=(10, 4))
        for r in results:
            t0 = r.result.series_t[0] if r.result.series_t else 0.0
            xs = [(t - t0) / 86400 for t in r.result.series_t]
            ax.plot(xs, getattr(r.result, attr), label=f"{r.strategy}+{r.backfill}",
                    linewidth=0.8)
        ax.set_xlabel("days since first submit")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in results:
        waits = sorted(rec.wait / 3600 for rec in r.result.records)
        if waits:
            ys = [(i + 1) / len(waits) for i in range(len(waits))]
            ax.plot(waits, ys, label=f"{r.strategy}+{r.backfill}", linewidth=0.9)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("wait (hours)")
    ax.set_ylabel("share of jobs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "wait_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
