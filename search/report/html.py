"""Assembling the report page: one self-contained HTML file (plotly.js inlined, opens offline).

Top to bottom: the verdict (the best trial's gain over the best hand-tuned baseline and why; over
fresh seeds when `tune confirm` ran, then the single-run figure), the confirmed table, the
panels (as many as `gather` describes), a sortable table of every trial, the log lines of the
shown trials in the notes' format, the mAP-latency plot of a constrained study, and Optuna's
own views.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from search.confirm.results import METRICS, Confirmation
from search.confirm.stats import LEVEL
from search.report.draw import trial_colors
from search.report.gather import ReportData
from search.report.rows import TrialRow
from search.report.views import View
from search.trainers.base import val_key

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; }
main { max-width: 1500px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 1.5em; margin: 0.2em 0; } h2 { font-size: 1.2em; margin: 1.6em 0 0.4em; }
.meta { color: #666; font-size: 0.9em; }
.verdict { background: #fff8e1; border-left: 6px solid #d62728; padding: 10px 16px;
  margin: 12px 0; }
.verdict .headline { font-size: 1.25em; font-weight: 600; margin: 0 0 4px; }
.verdict ul { margin: 4px 0; padding-left: 20px; }
.verdict .single-run { color: #555; margin: 0 0 4px; }
.howto { color: #444; font-size: 0.9em; }
.empty { font-size: 1.2em; padding: 24px; background: #f4f4f4; }
table { border-collapse: collapse; font-size: 0.85em; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; cursor: pointer; position: sticky; top: 0; user-select: none; }
th:hover { background: #e8e8e8; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
td.text, th.text { text-align: left; }
tr.baseline td { background: #eef5fb; } tr.best td { background: #fde8e8; font-weight: 600; }
tr.FAIL td, tr.PRUNED td { color: #777; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px;
  border-radius: 2px; }
.tablewrap { max-height: 560px; overflow: auto; border: 1px solid #ddd; }
.logs { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 10px; }
.logs > div { border: 1px solid #ddd; padding: 6px 10px; }
.logs pre { margin: 4px 0; font-size: 0.8em; overflow-x: auto; }
.logs .params { color: #555; font-size: 0.8em; }
.views { display: grid; grid-template-columns: repeat(auto-fill, minmax(640px, 1fr)); gap: 12px; }
.note { color: #666; font-style: italic; padding: 12px; border: 1px dashed #ccc; }
"""

# Sorts by each cell's data-v (numbers numerically, text otherwise); empty cells sort last.
_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int) -> tuple[str, str]:
    """(sort key, shown text) of a number that may be missing."""
    if value is None:
        return "", "-"
    return repr(value), f"{value:.{digits}f}"


def _duration(seconds: float | None) -> tuple[str, str]:
    if seconds is None:
        return "", "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return repr(seconds), f"{hours}h{minutes:02d}m"
    return repr(seconds), f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _param_cell(value: Any) -> tuple[str, str]:
    if value is None:
        return "", "-"
    if isinstance(value, bool):
        return str(value), str(value)
    if isinstance(value, int | float):
        return repr(value), f"{value:.4g}"
    return str(value), str(value)


def trials_table(rows: list[TrialRow], components: Sequence[str]) -> str:
    """The trials as a sortable table, best-first by mAP50-95; baselines and the best marked.
    One column per loss component: the trial's last unweighted validation loss."""
    param_names: list[str] = []
    for row in rows:
        param_names += [k for k in row.params if k not in param_names]
    head = ["trial", "state", "role", *param_names, "mAP50-95", "mAP50"]
    head += [val_key(c) for c in components] + ["inference ms"]
    head += ["train s/iter", "duration", "host", "note"]
    colors = trial_colors(rows)
    ordered = sorted(rows, key=lambda r: (r.mAP50_95 is None, -(r.mAP50_95 or 0.0), r.number))
    lines = ["<table class='sortable' id='trials'><thead><tr>"]
    text_cols = {"trial", "state", "role", "host", "note"}
    lines += [f"<th{' class=text' if h in text_cols else ''}>{_e(h)}</th>" for h in head]
    lines.append("</tr></thead><tbody>")
    for row in ordered:
        role = "best" if row.role == "best" else ("baseline" if row.baseline else "")
        swatch = f"<span class='swatch' style='background:{colors[row.number]}'></span>"
        cells: list[tuple[str, str, bool]] = [
            (str(row.number), f"{swatch}#{row.number}", True),
            (row.state, _e(row.state.lower()), True),
            (row.baseline or role, _e(f"baseline: {row.baseline}" if row.baseline else role), True),
        ]
        for name in param_names:
            key, text = _param_cell(row.params.get(name))
            cells.append((key, _e(text), False))
        numbers = [(row.mAP50_95, 4), (row.mAP50, 4)]
        numbers += [(row.val_losses.get(c), 4) for c in components] + [(row.inference_ms, 2)]
        for value, digits in numbers:
            key, text = _num(value, digits)
            cells.append((key, text, False))
        key, text = _num(row.train_latency, 4)
        cells.append((key, text, False))
        cells.append((*_duration(row.duration_s), False))
        cells.append((row.host or "", _e(row.host or "-"), True))
        note = []
        if row.feasible is False:
            note.append("over latency budget")
        if row.retry_of is not None:
            note.append(f"retries #{row.retry_of}")
        if row.error:
            note.append(row.error)
        cells.append(("; ".join(note), _e("; ".join(note)), True))
        tds = "".join(
            f"<td data-v='{_e(k)}'{' class=text' if is_text else ''}>{t}</td>"
            for k, t, is_text in cells
        )
        lines.append(f"<tr class='{row.state} {role}'>{tds}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def confirmed_table(c: Confirmation) -> str:
    """Each confirmed setting over its fresh seeds: the spread of both metrics, its single run,
    and its gain over the baseline with the interval and p-value."""
    head = ["trial", "runs"]
    for metric in METRICS:
        name = metric.replace("_", "-")
        head += [f"{name} mean", f"{name} std", f"{name} min", f"{name} max"]
    head += ["single run", "gain", f"{LEVEL:.0%} CI", "p", "test"]
    lines = ["<table id='confirmed-table'><thead><tr>"]
    lines += [f"<th{' class=text' if h in ('trial', 'test') else ''}>{_e(h)}</th>" for h in head]
    lines.append("</tr></thead><tbody>")
    for row in c.rows:
        cells = [f"<td class=text>{_e(row.name)}</td>", f"<td>{len(row.runs)}/{row.planned}</td>"]
        for metric in METRICS:
            s = row.spreads.get(metric)
            values = (s.mean, s.std, s.min, s.max) if s else (None, None, None, None)
            cells += [f"<td>{_num(v, 4)[1]}</td>" for v in values]
        cells.append(f"<td>{_num(row.single, 4)[1]}</td>")
        g = row.gain
        if g is None:
            cells += ["<td>-</td>"] * 4 + ["<td class=text>-</td>"]
        else:
            cells += [
                f"<td>{g.mean:+.4f}</td>",
                f"<td>{g.low:+.4f}..{g.high:+.4f}</td>",
                f"<td>{g.p_value:.2g}</td>",
                f"<td class=text>{_e(g.method)}</td>",
            ]
        css = "baseline" if row.baseline else ""
        lines.append(f"<tr class='{css}'>{''.join(cells)}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _figure(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )


_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _count(n: int) -> str:
    """A count in words, as the notes say "the seven panels"."""
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def _counts(data: ReportData) -> str:
    total = sum(data.counts.values())
    parts = [f"{n} {state.lower()}" for state, n in sorted(data.counts.items())]
    return f"{total} trials" + (": " + ", ".join(parts) if parts else "")


def _left_out(data: ReportData) -> str:
    """Why the panels and the table leave trials out (a big study), or nothing."""
    if not data.left_out:
        return ""
    total, drawn = sum(data.counts.values()), len(data.rows)
    return (
        f"<p class='howto' id='left-out'><b>{drawn} of the {total} trials are drawn and "
        "listed</b>: the best, the top trials, the baselines, any start or confirmed trials, "
        "the next best complete trials and an even sample of the rest. The other "
        f"{data.left_out} are not: a panel with a line per trial can't be read long before "
        f"{total} lines (at most {data.max_drawn} are drawn). They are in the counts above, "
        "in Optuna's views below (a sample) and in the storage: <code>tune dashboard</code> "
        "shows every trial.</p>"
    )


def render_page(
    data: ReportData,
    panels: go.Figure | None,
    latency: go.Figure | None,
    views: list[View],
    view_trials: int | None = None,
) -> str:
    """The whole page as one HTML string with plotly.js inlined; `view_trials` is how many
    trials Optuna's views were given (None: all)."""
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>tune report: {_e(data.study_name)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{_CSS}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script>",
        "</head><body><main>",
        f"<h1>Study <span id='study-name'>{_e(data.study_name)}</span></h1>",
        f"<div class='meta'>{_e(_counts(data))}; objective: {data.direction} mAP50-95; "
        f"generated {data.generated:%Y-%m-%d %H:%M}</div>",
        "<div class='verdict' id='verdict'>",
        f"<p class='headline'>{_e(data.headline)}</p>",
    ]
    if data.single_run:
        out.append(f"<p class='single-run' id='single-run'>Single runs: {_e(data.single_run)}</p>")
    if data.reasons:
        out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in data.reasons) + "</ul>")
    out.append("</div>")
    c = data.confirmation
    if c is not None:
        out.append("<h2 id='confirmed'>Confirmed over fresh seeds</h2>")
        out.append(
            f"<p class='howto'>The study's top trials and best baseline retrained with the same "
            f"{len(c.seeds)} fresh seeds ({', '.join(map(str, c.seeds))}) at {c.epochs} epochs "
            f"each ({c.done}/{c.planned} runs done). The gain is over the baseline, in "
            f"{c.metric.replace('_', '-')}; paired t: by seed.</p>"
        )
        out.append(f"<div class='tablewrap'>{confirmed_table(c)}</div>")
    if data.empty:
        out.append("<p class='empty' id='empty'>This study is empty: no trial has started yet. ")
        out.append("Run <code>tune launch</code> or <code>tune worker</code>, then rerun the ")
        out.append("report.</p></main></body></html>")
        return "".join(out)
    out.append(f"<h2 id='curves'>The {_count(len(data.panels))} panels</h2>")
    out.append(
        "<p class='howto'>Shown: the hand-tuned baselines (dashed) and the top trials (solid); "
        "the best trial is the thick red line. Every other trial is one click away in the "
        "legend. An <b>x</b> marks where a pruned or failed trial stopped. Loss curves are the "
        f"<b>unweighted</b> components ({_e(', '.join(data.components) or 'none recorded')}), "
        "comparable across trials; the weighted total is not.</p>"
    )
    out.append(_left_out(data))
    if panels is not None:
        out.append(_figure(panels, "panels"))
    out.append("<h2 id='table'>Trials</h2>")
    listed = (
        f" Listed: the {len(data.rows)} drawn trials; the other {data.left_out} are counted, "
        "not listed (see above)."
        if data.left_out
        else ""
    )
    out.append(f"<p class='howto'>Click a column header to sort.{listed}</p>")
    out.append(f"<div class='tablewrap'>{trials_table(data.rows, data.components)}</div>")
    if data.logs:
        out.append("<h2 id='logs'>Log lines of the shown trials</h2><div class='logs'>")
        for excerpt in data.logs:
            params = ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in excerpt.params.items()
            )
            out.append(
                f"<div><b>{_e(excerpt.label)}</b><div class='params'>{_e(params)}</div>"
                f"<pre>{_e(chr(10).join(excerpt.lines))}</pre></div>"
            )
        out.append("</div>")
    total = sum(data.counts.values())
    sampled = view_trials is not None and view_trials < total
    if latency is not None:
        out.append("<h2 id='latency'>mAP vs inference latency</h2>")
        if sampled:
            out.append(
                f"<p class='howto'>The trials drawn above and a sample of the rest: {view_trials} "
                f"of the {total} (as Optuna's views below).</p>"
            )
        out.append(_figure(latency, "latency-plot"))
    out.append("<h2 id='optuna'>Optuna's views</h2>")
    if sampled:
        out.append(
            f"<p class='howto' id='view-sample'>Drawn from {view_trials} of the {total} trials: "
            "the ones drawn above and an even sample of the rest (the intermediate values: "
            "the ones drawn above only).</p>"
        )
    out.append("<div class='views'>")
    for view in views:
        if view.figure is not None:
            out.append(f"<div>{_figure(view.figure, 'view-' + view.key)}</div>")
        else:
            out.append(
                f"<div class='note' id='view-{view.key}'><b>{_e(view.title)}</b>: "
                f"{_e(view.note)}</div>"
            )
    out.append("</div>")
    out.append(f"<script>{_SORT_JS}</script></main></body></html>")
    return "\n".join(out)
