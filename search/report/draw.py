"""Drawing the gathered report data with Plotly: the panels and the mAP-latency plot.

Styling says what a trial is at a glance: the best trial is a thick red line, the hand-tuned
baselines are dashed, the other top trials solid, and a pruned or failed trial's line ends in an
x. All lines of one trial share a legend group, so one legend click shows or hides that trial in
every panel. The grid follows from the list of panels (`panels.grid_of`).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from search.report.gather import Line, ReportData
from search.report.key_params import KeyParams
from search.report.panels import grid_of
from search.report.rows import BASELINE, BEST, TOP, TrialRow
from search.study.space import params_words

BEST_COLOR = "#d62728"
_BASELINE_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")
_TOP_COLORS = ("#ff7f0e", "#e377c2", "#bcbd22", "#1a9850", "#6a3d9a", "#b15928")
_OTHER_COLORS = (
    "#a6cee3",
    "#b2df8a",
    "#fb9a99",
    "#fdbf6f",
    "#cab2d6",
    "#ffff99",
    "#8dd3c7",
    "#bebada",
    "#80b1d3",
    "#fccde5",
)
_LEGEND_RANK = {BEST: 1000, BASELINE: 2000, TOP: 3000}
_WIDTH = {BEST: 4.0, TOP: 2.0, BASELINE: 2.0}
# a row of panels, the gap between rows and the legend's height (in the first row), in pixels:
# the sizes the seven panels of tune's detector (four rows, 1250 px) were tuned at
_ROW_PX, _GAP_PX, _LEGEND_PX = 312.5, 87.5, 287.5


def trial_colors(rows: list[TrialRow]) -> dict[int, str]:
    """A colour per trial, the same in every figure: red for the best, a palette per role."""
    colors: dict[int, str] = {}
    counters = {BASELINE: 0, TOP: 0, "other": 0}
    palettes = {BASELINE: _BASELINE_COLORS, TOP: _TOP_COLORS, "other": _OTHER_COLORS}
    for row in rows:
        if row.role == BEST:
            colors[row.number] = BEST_COLOR
            continue
        role = row.role if row.role in (BASELINE, TOP) else "other"
        palette = palettes[role]
        colors[row.number] = palette[counters[role] % len(palette)]
        counters[role] += 1
    return colors


def legend_name(row: TrialRow, named: KeyParams) -> str:
    """The trial's label and its setting in a few words, so the legend says what each line is:
    its loss weights, then its optimizer and learning rate (`named.legend`), in the order its
    study's space names them."""
    keys = [k for k in row.params if k in named.legend]
    keys.sort(key=lambda k: k not in named.loss_weights)  # stable: the weights first
    short = []
    for k in keys:
        v = row.params[k]
        if v is None:
            continue
        # a choice (the optimizer) speaks for itself: "Adam", not "optimizer Adam"
        short.append(
            f"{k} {v:.2g}" if isinstance(v, float) else (v if isinstance(v, str) else f"{k} {v}")
        )
    return row.label + (" · " + " ".join(short) if short else "")


def _axis_ref(name: str) -> str:
    """A trace's reference to an axis of the layout: "xaxis3" -> "x3"."""
    return name.replace("axis", "")


def _line_traces(
    line: Line, color: str, legend: bool, hover: str, y_title: str, legend_text: str
) -> list[dict[str, Any]]:
    """The Plotly traces (as plain dicts) of one line: the line, and the end marker of a pruned
    or failed trial."""
    visible: bool | str = True if line.shown else "legendonly"
    dash = "dot" if line.variant else ("dash" if line.role == BASELINE else "solid")
    width = _WIDTH.get(line.role, 1.2)
    name = line.name + (f" ({line.variant})" if line.variant else "")
    traces: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "x": line.x,
            "y": line.y,
            "mode": "lines+markers" if len(line.x) == 1 else "lines",
            "name": legend_text,
            "legendgroup": f"trial{line.trial}",
            "showlegend": legend,
            # legend order: the best, then the baselines, the top trials, the rest
            "legendrank": _LEGEND_RANK.get(line.role, 4000) + line.trial,
            "visible": visible,
            "line": {"color": color, "width": width, "dash": dash},
            "opacity": 1.0 if line.role in (BEST, BASELINE, TOP) else 0.8,
            "hovertemplate": (
                f"<b>{name}</b><br>iter %{{x}}<br>{y_title} %{{y:.4g}}<br>{hover}<extra></extra>"
            ),
        }
    ]
    if line.cut_short:
        # the end marker makes a pruned or failed run visibly shorter than the rest
        traces.append(
            {
                "type": "scatter",
                "x": [line.x[-1]],
                "y": [line.y[-1]],
                "mode": "markers",
                "legendgroup": f"trial{line.trial}",
                "showlegend": False,
                "visible": visible,
                "marker": {
                    "symbol": "x-thin",
                    "size": 11,
                    "line": {"width": 2.5, "color": color},
                },
                "hovertemplate": f"<b>{line.name}</b>: stopped at iter %{{x}}<extra></extra>",
            }
        )
    return traces


def panels_figure(data: ReportData) -> go.Figure:
    """The panels over iterations in one figure, one legend entry per trial."""
    grid = grid_of([p.spec for p in data.panels])
    height = grid.rows * _ROW_PX
    fig = make_subplots(
        rows=grid.rows,
        cols=grid.cols,
        specs=grid.specs(),
        # make_subplots titles the cells row by row, the order grid_of fills them in
        subplot_titles=[p.title for p in data.panels],
        vertical_spacing=_GAP_PX / height,
        horizontal_spacing=0.07,
    )
    colors = trial_colors(data.rows)
    hover = {r.number: params_words(r.params) for r in data.rows}
    names = {r.number: legend_name(r, data.key_params) for r in data.rows}
    in_legend: set[int] = set()
    traces: list[dict[str, Any]] = []
    axis_titles: dict[str, dict[str, Any]] = {}
    # draw hidden trials first so the shown ones sit on top, and the best one last
    rank = {"other": 0, "top": 1, "baseline": 2, "best": 3}
    for panel in data.panels:
        row, col = grid.cells[panel.key]
        cell = fig.get_subplot(row, col)
        axes = {
            "xaxis": _axis_ref(cell.xaxis.plotly_name),
            "yaxis": _axis_ref(cell.yaxis.plotly_name),
        }
        for line in sorted(panel.lines, key=lambda ln: (rank.get(ln.role, 0), ln.trial)):
            legend = line.trial not in in_legend
            in_legend.add(line.trial)
            for trace in _line_traces(
                line,
                colors[line.trial],
                legend,
                hover[line.trial],
                panel.y_title,
                names[line.trial],
            ):
                traces.append({**trace, **axes})
        # one layout update for all axes below: Plotly's per-cell update_xaxes is slow
        axis_titles[cell.yaxis.plotly_name] = {
            "title": {"text": panel.y_title},
            "type": "log" if panel.log_y else "linear",
        }
        axis_titles[cell.xaxis.plotly_name] = {"title": {"text": "iteration", "standoff": 2}}
    fig.update_layout(
        **axis_titles,
        height=height,
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
        template="plotly_white",
        hovermode="closest",
        legend={
            "title": {"text": "trials (click: show/hide, double-click: only this)"},
            "groupclick": "togglegroup",
            "orientation": "v",
            "font": {"size": 11},
            "x": 0.54,
            "xanchor": "left",
            "y": 1.0,
            "yanchor": "top",
            "maxheight": _LEGEND_PX / height,  # of the figure: the first row; longer ones scroll
            "bgcolor": "rgba(250,250,250,0.9)",
            "bordercolor": "#ddd",
            "borderwidth": 1,
        },
    )
    # Plotly validates every property of every trace as it is added: about 1 ms a trace, over a
    # second for a hundred trials. These traces are built here from a fixed set of properties
    # (tests/search/test_report_html.py validates them once), so the figure takes them as they are.
    return go.Figure(data=traces, layout=fig.layout, _validate=False)


def latency_figure(data: ReportData) -> go.Figure | None:
    """mAP50-95 against inference latency, feasible and infeasible trials told apart."""
    if data.latency is None:
        return None
    fig = go.Figure()
    for feasible, name, color, symbol in (
        (True, "feasible (meets the latency budget)", "#1a9850", "circle"),
        (False, "infeasible (over the budget)", "#d62728", "x"),
    ):
        points = [p for p in data.latency if p.feasible == feasible]
        fig.add_trace(
            go.Scatter(
                x=[p.inference_ms for p in points],
                y=[p.mAP50_95 for p in points],
                text=[p.label for p in points],
                mode="markers",
                name=name,
                marker={"color": color, "symbol": symbol, "size": 10},
                hovertemplate="<b>%{text}</b><br>%{x:.2f} ms<br>mAP50-95 %{y:.4f}<extra></extra>",
            )
        )
    fig.update_layout(
        title="mAP50-95 vs inference latency (batch 1, per image)",
        xaxis_title="inference ms / image",
        yaxis_title="mAP50-95",
        template="plotly_white",
        height=420,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig
