"""Capacity planning from a terminal: ``forecast`` (a table, or a chart with
``--plot``) and ``predict`` (what a job will use, learned from past runs)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from apportion.cli.options import JsonOpt, ServerOpt, TokenOpt, client_for
from apportion.cli.output import (
    api_errors,
    console,
    err_console,
    error_object,
    fail,
    show,
    table,
)
from apportion.cli.units import human

GROUP_BY = ("resource", "facility", "type")
MAX_PANELS = 12


def _amount(resource: str, value: float | None) -> str:
    if value is None:
        return "-"
    from apportion.core.resources import format_human

    # The nearest, not the next whole unit up: 0.2 cpu of forecast is not "1".
    return format_human(resource, max(0, round(value)))


def _error(series: dict[str, Any]) -> str:
    bt = series.get("backtest")
    if not bt:
        return "-"
    parts = []
    if bt.get("mape_percent") is not None:
        parts.append(f"MAPE {bt['mape_percent']:.1f}%")
    if bt.get("mase") is not None:
        parts.append(f"MASE {bt['mase']:.2f}")
    return ", ".join(parts) or "-"


def _exhaustion(series: dict[str, Any]) -> str:
    at = series.get("exhaustion_at")
    if at is None:
        return "not within the horizon"
    hours = series.get("exhaustion_in_hours") or 0.0
    when = "now" if hours <= 0 else (f"in {hours / 24:.1f} d" if hours >= 48
                                     else f"in {hours:.1f} h")
    return f"{at[:16].replace('T', ' ')} ({when})"


def _forecast_rows(answer: dict[str, Any]) -> list[list[str]]:
    rows = []
    for entry in answer["forecasts"]:
        resource = entry["resource"]
        for i, metric in enumerate(("allocated", "demand")):
            series = entry[metric]
            end = series.get("end") or {}
            now_value = entry["now"][f"{metric}_base"]
            ahead = "-" if not end or series["model"] == "insufficient_history" else (
                f"{_amount(resource, end['mean'])} "
                f"[{_amount(resource, end['lo80'])}–{_amount(resource, end['hi80'])}]")
            model = series["model"] + (" (seasonal)" if series["seasonal"] else "")
            rows.append([
                entry["group"] if i == 0 else "", resource if i == 0 else "",
                human(resource, entry["capacity"]) if i == 0 else "", metric,
                _amount(resource, now_value),
                ahead, model, _error(series), _exhaustion(series),
            ])
    return rows


def _render_forecast(answer: dict[str, Any]) -> None:
    days = answer["days"]
    table(f"forecast by {answer['group_by']}, {days:g} days ahead "
          f"(step {answer['step_seconds']:g} s)",
          ["group", "resource", "capacity", "series", "now", f"in {days:g} d (80 %)", "model",
           "back-test error", "exhaustion"],
          _forecast_rows(answer))
    for line in _history_lines(answer):
        console.print(line)


def _history_lines(answer: dict[str, Any]) -> list[str]:
    """What a series without enough history waits for, once per distinct
    reason (on a fresh server every series says the same)."""
    waiting: dict[str, list[str]] = {}
    for entry in answer["forecasts"]:
        for metric in ("allocated", "demand"):
            series = entry[metric]
            if series.get("history_needed_s"):
                why = str(series["reason"]).removeprefix("insufficient_history: ")
                group, resource = entry["group"], entry["resource"]
                name = resource if group == resource else f"{group}/{resource}"
                waiting.setdefault(why, []).append(f"{name} {metric}")
    return [f"not enough history yet for {', '.join(names)}: {why}"
            for why, names in waiting.items()]


def forecast(
    days: Annotated[float, typer.Option("--days", help="how far ahead, 1 to 90")] = 7.0,
    group_by: Annotated[str, typer.Option("--group-by", help="resource|facility|type")]
    = "resource",
    history_days: Annotated[float | None, typer.Option(
        "--history-days", help="recorded history to fit on (default 35)")] = None,
    group: Annotated[str | None, typer.Option("--group", help="only this group")] = None,
    resource: Annotated[str | None, typer.Option("--resource", help="only this resource")]
    = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="also draw a PNG chart here (needs the 'plot' extra: matplotlib)")]
    = None,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Where allocated capacity and demand are going: per group and resource,
    the forecast with its 80 % interval, the model and its back-test error,
    and when it reaches capacity."""
    if group_by not in GROUP_BY:
        raise typer.BadParameter(f"--group-by: one of {', '.join(GROUP_BY)}")
    if not 1 <= days <= 90:
        raise typer.BadParameter("--days: from 1 to 90")
    pyplot = _pyplot(as_json) if plot is not None else None
    with api_errors(as_json), client_for(server, token) as c:
        answer = c.forecast(days=days, group_by=group_by, history_days=history_days,
                            group=group, resource=resource,
                            points=as_json or plot is not None)
    show(answer, as_json, _render_forecast)
    if plot is not None and pyplot is not None:
        drawn = draw_forecast(answer, plot, pyplot)
        (err_console if as_json else console).print(f"chart of {drawn} series written to {plot}")


def _pyplot(as_json: bool) -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        message = "--plot needs matplotlib; install the plot extra: pip install 'apportion[plot]'"
        fail(error_object("missing_extra", message, None), "[red]error:[/red]", message, 1,
             as_json)
    return plt


def _times(values: list[float]) -> list[datetime]:
    return [datetime.fromtimestamp(t, UTC) for t in values]


def draw_forecast(answer: dict[str, Any], path: Path, plt: Any) -> int:
    """One panel per group and resource: history, forecast mean, shaded 80 %
    and 95 % intervals, capacity and the expected exhaustion."""
    entries = answer["forecasts"][:MAX_PANELS]
    panels = max(1, len(entries))
    fig, axes = plt.subplots(panels, 1, figsize=(11, 3.2 * panels), squeeze=False)
    colors = {"allocated": "tab:blue", "demand": "tab:orange"}
    for ax, entry in zip(axes[:, 0], entries, strict=False):
        for metric in ("allocated", "demand"):
            series = entry[metric]
            color = colors[metric]
            history = series.get("history") or []
            if history:
                ax.plot(_times([h[0] for h in history]), [h[1] for h in history], color=color,
                        lw=1.2, label=f"{metric} (recorded)")
            pts = series.get("points") or []
            if pts:
                t = _times([p[0] for p in pts])
                ax.plot(t, [p[1] for p in pts], color=color, lw=1.5, ls="--",
                        label=f"{metric} forecast: {series['model']}, {_error(series)}")
                ax.fill_between(t, [p[4] for p in pts], [p[5] for p in pts], color=color,
                                alpha=0.12, lw=0)
                ax.fill_between(t, [p[2] for p in pts], [p[3] for p in pts], color=color,
                                alpha=0.25, lw=0)
            if series.get("exhaustion_at_epoch") is not None:
                ax.axvline(datetime.fromtimestamp(series["exhaustion_at_epoch"], UTC),
                           color=color, lw=1, ls=":")
        ax.axhline(entry["capacity_base"], color="tab:red", lw=1,
                   label=f"capacity {entry['capacity']}")
        ax.set_title(f"{entry['resource']} — {answer['group_by']} {entry['group']}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    if not entries:
        axes[0, 0].text(0.5, 0.5, "no capacity to forecast", ha="center", va="center")
    fig.suptitle(f"apportion capacity forecast, {answer['days']:g} days ahead "
                 "(shaded: 80 % and 95 % intervals)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(entries)


def predict(
    name: Annotated[str, typer.Argument(help="the job's name")],
    user: Annotated[str | None, typer.Option("--user", help="whose runs (default: you)")]
    = None,
    command: Annotated[str | None, typer.Option("--command", help="the exact command line")]
    = None,
    cpu: Annotated[str | None, typer.Option("--cpu", help="the request, if any")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="the request, if any")]
    = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="the request, if any")] = None,
    runtime: Annotated[int | None, typer.Option("--runtime", help="requested seconds")] = None,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """What a job called NAME will use, learned from its (or its user's)
    finished runs: each estimate with its tier, confidence and sample count."""
    with api_errors(as_json), client_for(server, token) as c:
        answer = c.prediction(name, user=user, command=command, cpu=cpu, memory=memory,
                              gpu=gpu, runtime_s=runtime)
    show(answer, as_json, _render_prediction)


def _used(key: str, value: int | None) -> str:
    """A recorded peak in the estimate's own units (bytes as Mi/Gi, seconds)."""
    if value is None:
        return "-"
    if key == "runtime_s":
        return f"{value}s"
    if key == "cpu_seconds":
        return f"{value} cpu-s"
    from apportion.core.resources import format_human

    try:
        return format_human(key, int(value))
    except (ValueError, KeyError):
        return str(value)


def _render_prediction(p: dict[str, Any]) -> None:
    rows = []
    for key, d in p["detail"].items():
        before = d.get("max_used_before")
        rows.append([key, d["display"], d["tier"], str(d["samples"]), d["basis"] or "-",
                     f"{100 * d['confidence']:.0f}%", _used(key, before)])
    table(f"prediction for {p['name']} of {p['user']}: tier {p['tier']}, confidence "
          f"{100 * p['confidence']:.0f}%, {p['samples']} sample(s)",
          ["key", "estimate", "tier", "samples", "basis", "confidence", "most used before"],
          rows)
    for note in p["notes"]:
        console.print(f"note: {note}")


def register(app: typer.Typer) -> None:
    """Add ``forecast`` and ``predict`` to the ``apportion`` command."""
    app.command("forecast")(forecast)
    app.command("predict")(predict)
