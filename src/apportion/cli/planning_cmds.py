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
MAX_PANELS = 24
"""A taller chart is no longer read; --group and --resource pick panels."""


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
        drawn, empty = draw_forecast(answer, plot, pyplot)
        note = f" (no data yet for {', '.join(empty)})" if empty else ""
        (err_console if as_json else console).print(
            f"chart of {drawn} panel(s) written to {plot}{note}", highlight=False,
            soft_wrap=True)


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


METRICS = ("allocated", "demand")


def _forecast_points(series: dict[str, Any]) -> list[list[float]]:
    """A series' forecast, unless it had too little history to make one (its
    points are then a placeholder the table shows as '-')."""
    if series["model"] == "insufficient_history":
        return []
    return list(series.get("points") or [])


def _has_data(entry: dict[str, Any]) -> bool:
    return any(entry[m].get("history") or _forecast_points(entry[m]) for m in METRICS)


def _panel_name(answer: dict[str, Any], entry: dict[str, Any]) -> str:
    group, resource = entry["group"], entry["resource"]
    return resource if group == resource else f"{group}/{resource}"


def axis_unit(resource: str, top: float) -> tuple[float, str]:
    """What one tick step counts in: cores for cpu (its base unit is the
    millicore), the largest binary unit not over ``top`` for bytes (so the
    ticks are 16Gi, 32Gi, not 1.7e10), plain counts otherwise."""
    from apportion.core.resources import BINARY, Unit, unit_of

    unit = unit_of(resource)
    if unit is Unit.MILLI:
        return 1000.0, ""
    if unit is Unit.BYTES:
        fitting = [(size, suffix) for suffix, size in BINARY.items() if size <= top]
        if fitting:
            size, suffix = max(fitting)
            return float(size), suffix
    return 1.0, ""


def _draw_panel(ax: Any, answer: dict[str, Any], entry: dict[str, Any]) -> None:
    """History, forecast mean, shaded 80 % and 95 % intervals, capacity and
    the expected exhaustion, on a y-axis in the resource's human unit."""
    import matplotlib.dates
    from matplotlib.ticker import FuncFormatter

    mdates: Any = matplotlib.dates  # untyped: matplotlib's date helpers have no hints

    resource = entry["resource"]
    top = max([entry["capacity_base"], *(p[5] for m in METRICS for p in _forecast_points(
        entry[m])), *(h[1] for m in METRICS for h in entry[m].get("history") or [])])
    scale, suffix = axis_unit(resource, top)
    colors = {"allocated": "tab:blue", "demand": "tab:orange"}
    for metric in METRICS:
        series, color = entry[metric], colors[metric]
        history = series.get("history") or []
        if history:
            # A lone sample is a dot: a line through one point draws nothing.
            ax.plot(_times([h[0] for h in history]), [h[1] / scale for h in history],
                    color=color, lw=1.2, marker="o" if len(history) == 1 else None,
                    label=f"{metric} (recorded)")
        pts = _forecast_points(series)
        if not pts and series.get("history_needed_s"):
            ax.plot([], [], color=color, ls="--", label=f"{metric}: too little history to "
                                                        "forecast yet")
        if pts:
            t = _times([p[0] for p in pts])
            ax.plot(t, [p[1] / scale for p in pts], color=color, lw=1.5, ls="--",
                    label=f"{metric} forecast: {series['model']}, {_error(series)}")
            ax.fill_between(t, [p[4] / scale for p in pts], [p[5] / scale for p in pts],
                            color=color, alpha=0.12, lw=0)
            ax.fill_between(t, [p[2] / scale for p in pts], [p[3] / scale for p in pts],
                            color=color, alpha=0.25, lw=0)
        if series.get("exhaustion_at_epoch") is not None:
            ax.axvline(datetime.fromtimestamp(series["exhaustion_at_epoch"], UTC),
                       color=color, lw=1, ls=":",
                       label=f"{metric} reaches capacity {_exhaustion(series)}")
    ax.axhline(entry["capacity_base"] / scale, color="tab:red", lw=1,
               label=f"capacity {_amount(resource, entry['capacity_base'])}")
    ax.set_ylim(bottom=0)  # an interval's lower edge may dip below; a quantity cannot
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{suffix}"))
    locator = mdates.AutoDateLocator(tz=UTC, minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    # Days as "Dec 06", not a bare "06" under a "2026-Dec" in the corner.
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(
        locator, tz=UTC, formats=["%Y", "%b", "%b %d", "%H:%M", "%H:%M", "%S.%f"],
        zero_formats=["", "%Y", "%b %d", "%b %d", "%H:%M", "%H:%M"],
        offset_formats=["", "%Y", "%Y", "%Y %b %d", "%Y %b %d", "%Y %b %d %H:%M"]))
    ax.tick_params(labelbottom=True)
    ax.set_ylabel(f"{resource} ({'cores' if resource == 'cpu' else suffix or 'count'})")
    ax.set_title(f"{resource} — {answer['group_by']} {entry['group']}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def forecast_figure(answer: dict[str, Any], plt: Any) -> tuple[Any, list[str], list[str]]:
    """The chart: one panel for every group and resource with data (history
    or a forecast); the figure, the panels drawn and those left out for want
    of data (or past ``MAX_PANELS``, said as such)."""
    entries = [e for e in answer["forecasts"] if _has_data(e)]
    empty = [_panel_name(answer, e) for e in answer["forecasts"] if not _has_data(e)]
    if len(entries) > MAX_PANELS:
        empty += [f"{_panel_name(answer, e)} (over {MAX_PANELS} panels)"
                  for e in entries[MAX_PANELS:]]
        entries = entries[:MAX_PANELS]
    # One time axis for all: a panel with one sample lines up with the others.
    fig, axes = plt.subplots(max(1, len(entries)), 1, figsize=(11, 3.4 * max(1, len(entries))),
                             squeeze=False, sharex=True)
    for ax, entry in zip(axes[:, 0], entries, strict=False):
        _draw_panel(ax, answer, entry)
    if not entries:
        axes[0, 0].text(0.5, 0.5, "no history or forecast to draw yet", ha="center",
                        va="center")
        axes[0, 0].set_axis_off()
    fig.suptitle(f"apportion capacity forecast, {answer['days']:g} days ahead "
                 "(shaded: 80 % and 95 % intervals; times in UTC)", fontsize=11)
    fig.tight_layout()
    return fig, [_panel_name(answer, e) for e in entries], empty


def draw_forecast(answer: dict[str, Any], path: Path, plt: Any) -> tuple[int, list[str]]:
    """Write the chart to ``path``: how many panels, and what was left out."""
    fig, drawn, empty = forecast_figure(answer, plt)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(drawn), empty


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
