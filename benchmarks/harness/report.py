"""Reports of our results beside the paper's numbers: Markdown, CSV, LaTeX, PNG plots and one offline HTML page.

A cell reads `ours (paper, delta)`. The delta is taken between the two numbers as printed (2 decimals), so
the three printed numbers always agree. What a checkpoint's own release paper reports (a suite's `reported:`) is a
row of its own under the checkpoint's, labelled with its source. A synthetic suite's results (tiny models) go into
tables of their own, without the paper's numbers. A suite's chance levels are a row of each table with those metrics
and a dashed line in its bar charts. Every writer goes through a temporary file, so a reader (a browser refreshing
the page, a CI job collecting artefacts) never sees half a report.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.safe_io import write_bytes_atomic

from .reference import (
    METRICS,
    POSITION_GRID_GAMMA,
    POSITION_GRID_GAMMA_POS,
    TABLES,
    PaperTable,
    ReportedRow,
    parse_reference,
)
from .suite import slug

OTHER_KEY = "other"
SYNTHETIC_KEY = "synthetic"
LEGEND = ("Cells: ours (paper, ours - paper); '- (paper)' where we have no value; '-' where neither has one. Rows "
          "'reported in ...': the release's own paper, its recipe, as cited.")
SYNTHETIC_NOTE = ("Note: these numbers come from tiny models and/or synthetic data. They can show an effect at toy "
                  "scale, never a reproduction of the paper's numbers.")
SYNTHETIC_TITLE = "Synthetic data, tiny models (not comparable with the paper)"
SYNTHETIC_LEGEND = "Cells: our value; '-' where not measured. No paper numbers: tiny models are not comparable."
CHANCE_LABEL = "chance level"
CSV_FIELDS = ("table", "label", "reference", "metric", "ours", "paper", "delta", "source")
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
}


@dataclass(frozen=True)
class Result:
    """One checkpoint's measured metrics (percent, canonical keys) and the paper row it reproduces, if any."""

    label: str
    reference: str | None
    metrics: dict[str, float]
    grids: dict[str, list[list[float]]] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # benchmark -> (step, training loss)
    reported: tuple[ReportedRow, ...] = ()  # what the checkpoint's release paper reports

    @property
    def shown_metrics(self) -> set[str]:
        """The metrics this result puts in a table: measured or reported."""
        return set(self.metrics).union(*(row.values for row in self.reported))


def _ordered_metrics(keys: Iterable[str]) -> tuple[str, ...]:
    """Canonical order, then any metric the paper does not know in alphabetical order (never dropped)."""
    keys = set(keys)
    return tuple(m for m in METRICS if m in keys) + tuple(sorted(keys - set(METRICS)))


def paper_tables(results: Sequence[Result]) -> list[tuple[PaperTable, list[Result]]]:
    """The paper tables the results refer to (paper order, results in input order), then "Other checkpoints".

    A table also gets a column for each metric its results measured beyond the paper's columns, so no number
    we measured is left out of a report. An unknown reference raises ValueError naming it.
    """
    grouped: dict[str, list[Result]] = {}
    for result in results:
        key = parse_reference(result.reference)[0].key if result.reference else OTHER_KEY
        grouped.setdefault(key, []).append(result)
    tables = []
    for table in [*TABLES.values(), PaperTable(OTHER_KEY, "Other checkpoints", "checkpoint", ())]:
        if table.key in grouped:
            measured = _ordered_metrics(m for result in grouped[table.key] for m in result.shown_metrics)
            extra = tuple(m for m in measured if m not in table.columns)
            tables.append((replace(table, columns=table.columns + extra), grouped[table.key]))
    return tables


def report_tables(results: Sequence[Result], synthetic: bool = False) -> list[tuple[PaperTable, list[Result]]]:
    """`paper_tables`, or for a synthetic suite one table of our numbers alone: under a paper table's title and
    beside its numbers, a tiny model's results would read as a reproduction of the paper."""
    if not synthetic:
        return paper_tables(results)
    if not results:
        return []
    columns = _ordered_metrics(m for result in results for m in result.shown_metrics)
    table = PaperTable(SYNTHETIC_KEY, SYNTHETIC_TITLE, "checkpoint", columns)
    return [(table, [replace(result, reference=None) for result in results])]


def _chance_levels(table: PaperTable, chance: Mapping[str, float] | None) -> list[float | None] | None:
    """The chance row of a table, a level or None per column; None for a table without any."""
    levels = [(chance or {}).get(metric) for metric in table.columns]
    return levels if any(level is not None for level in levels) else None


def _paper_value(result: Result, metric: str) -> float | None:
    if result.reference is None:
        return None
    table, row_id = parse_reference(result.reference)
    return table.rows[row_id].get(metric)


def _printed_delta(ours: float, paper: float) -> float:
    """ours - paper between the numbers as printed; `+ 0.0` turns -0.0 into 0.0 so no "-0.00" appears."""
    return round(round(ours, 2) - paper, 2) + 0.0


def format_cell(ours: float | None, paper: float | None) -> str:
    """`42.31 (42.14, +0.17)`, `42.31` without a paper value, `- (42.14)` without ours, `-` without either."""
    if ours is None:
        return "-" if paper is None else f"- ({paper:.2f})"
    if paper is None:
        return f"{ours:.2f}"
    return f"{ours:.2f} ({paper:.2f}, {_printed_delta(ours, paper):+.2f})"


def _row_label(result: Result) -> str:
    return result.label if result.reference is None else f"{result.label} ({parse_reference(result.reference)[1]})"


def _header(table: PaperTable) -> list[str]:
    first = f"checkpoint ({table.row_header})" if table.rows else "checkpoint"
    return [first, *table.columns]


def _legend(table: PaperTable) -> str:
    return SYNTHETIC_LEGEND if table.key == SYNTHETIC_KEY else LEGEND


def _pairs(table: PaperTable, result: Result) -> list[tuple[float | None, float | None]]:
    return [(result.metrics.get(metric), _paper_value(result, metric)) for metric in table.columns]


def _reported_rows(table: PaperTable, result: Result) -> list[ReportedRow]:
    """The result's reported rows with a value in one of the table's columns."""
    return [row for row in result.reported if any(metric in row.values for metric in table.columns)]


def _reported_label(result: Result, row: ReportedRow) -> str:
    return f"{result.label}: reported in {row.source}"


def _text_rows(table: PaperTable, results: Sequence[Result]) -> list[tuple[bool, list[str]]]:
    """(is a reported row, cells as text) of one table, shared by the Markdown and HTML renderings."""
    rows = []
    for result in results:
        rows.append((False, [_row_label(result), *(format_cell(ours, paper) for ours, paper in _pairs(table, result))]))
        rows += [(True, [_reported_label(result, row), *(format_cell(row.values.get(metric), None)
                                                          for metric in table.columns)])
                 for row in _reported_rows(table, result)]
    return rows


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _chance_text(levels: Sequence[float | None]) -> list[str]:
    return [CHANCE_LABEL, *(format_cell(level, None) for level in levels)]


def render_markdown(results: Sequence[Result], title: str = "droppos-bench report", synthetic: bool = False,
                    chance: Mapping[str, float] | None = None) -> str:
    """The report as Markdown: one table per paper table (one in all for a synthetic suite), each with its chance
    row where `chance` has a level for one of its metrics; deterministic so it can be diffed and tested."""
    lines = [f"# {title}", ""]
    if synthetic:
        lines += [f"> {SYNTHETIC_NOTE}", ""]
    for table, members in report_tables(results, synthetic):
        header = _header(table)
        lines += [f"## {table.title}", "", _markdown_row(header), _markdown_row(["---"] * len(header))]
        lines += [_markdown_row(row) for _, row in _text_rows(table, members)]
        if levels := _chance_levels(table, chance):
            lines.append(_markdown_row(_chance_text(levels)))
        lines += ["", _legend(table), ""]
    return "\n".join(lines)


def render_csv(results: Sequence[Result], synthetic: bool = False, chance: Mapping[str, float] | None = None) -> str:
    """Long format, one line per table cell (table, label, reference, metric, ours, paper, delta, source); empty =
    none. A chance level is a line labelled "chance level" with the level as `ours`, one per metric that has one. A
    reported number is a line of the checkpoint's label with the number as `paper` and its `source`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for table, members in report_tables(results, synthetic):
        for result in members:
            for metric, (ours, paper) in zip(table.columns, _pairs(table, result), strict=True):
                delta = "" if ours is None or paper is None else f"{_printed_delta(ours, paper):.2f}"
                writer.writerow([table.key, result.label, result.reference or "", metric,
                                 "" if ours is None else ours, "" if paper is None else paper, delta, ""])
            for row in _reported_rows(table, result):
                for metric in table.columns:
                    if metric in row.values:
                        writer.writerow([table.key, result.label, "", metric, "", row.values[metric], "", row.source])
        for metric in table.columns:
            if chance and metric in chance:
                writer.writerow([table.key, CHANCE_LABEL, "", metric, chance[metric], "", "", ""])
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _latex_cell(ours: float | None, paper: float | None) -> str:
    if ours is None:
        return "--" if paper is None else f"-- ({paper:.2f})"
    if paper is None:
        return f"{ours:.2f}"
    return f"{ours:.2f}$^{{{_printed_delta(ours, paper):+.2f}}}$"


def render_latex(results: Sequence[Result], synthetic: bool = False, chance: Mapping[str, float] | None = None) -> str:
    """One booktabs tabular per table; a cell is ours with ours - paper as a superscript."""
    blocks = []
    for table, members in report_tables(results, synthetic):
        lines = [f"% {table.title}", r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
                 " & ".join(_latex_escape(cell) for cell in _header(table)) + r" \\", r"\midrule"]
        for result in members:
            cells = [_latex_escape(_row_label(result)), *(_latex_cell(o, p) for o, p in _pairs(table, result))]
            lines.append(" & ".join(cells) + r" \\")
            for row in _reported_rows(table, result):
                cells = [_latex_escape(_reported_label(result, row)),
                         *(_latex_cell(row.values.get(metric), None) for metric in table.columns)]
                lines.append(" & ".join(r"\textit{" + cell + "}" for cell in cells) + r" \\")
        if levels := _chance_levels(table, chance):
            lines += [r"\midrule", " & ".join([CHANCE_LABEL, *(_latex_cell(level, None) for level in levels)]) + r" \\"]
        lines += [r"\bottomrule", r"\end{tabular}"]
        blocks.append("\n".join(lines))
    return "% needs \\usepackage{booktabs}\n\n" + "\n\n".join(blocks) + "\n"


@dataclass(frozen=True)
class Plot:
    """A PNG of the report and the caption the HTML page shows under it."""

    path: Path
    caption: str


def _save_figure(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _percent_top(results: Sequence[Result], metrics: Sequence[str], chance: Mapping[str, float]) -> float:
    """The top of a y axis every bar chart of `results` shares, with room for the bar labels."""
    values = [value for result in results for value in result.metrics.values()]
    values += [value for result in results for m in metrics if (value := _paper_value(result, m)) is not None]
    values += [row.values[m] for result in results for row in result.reported for m in metrics if m in row.values]
    values += [chance[m] for m in metrics if m in chance]
    return 1.15 * max(values, default=0.0) or 1.0


def plot_metric_bars(results: Sequence[Result], out_dir: str | os.PathLike, chance: Mapping[str, float] | None = None,
                     size: tuple[float, float] = (6.0, 4.0)) -> list[Plot]:
    """One bar chart per measured metric, all on one y range so their bars compare: our checkpoints as bars, the
    paper's value as a diamond, a release paper's reported value as a triangle, the chance level as a dashed line."""
    chance = chance or {}
    metrics = _ordered_metrics(m for result in results for m in result.metrics)
    top = _percent_top(results, metrics, chance)
    plots = []
    for metric in metrics:
        measured = [result for result in results if metric in result.metrics]
        fig = Figure(figsize=size, layout="constrained")
        ax = fig.subplots()
        xs = np.arange(len(measured))
        bars = ax.bar(xs, [result.metrics[metric] for result in measured], color="tab:blue", label="ours")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        shown = ["ours (bars)"]
        papers = [(x, _paper_value(result, metric)) for x, result in zip(xs, measured, strict=True)]
        papers = [(x, value) for x, value in papers if value is not None]
        if papers:
            ax.scatter(*zip(*papers, strict=True), marker="D", color="tab:orange", edgecolor="black", zorder=3,
                       label="paper")
            shown.append("paper (diamonds)")
        reported = [(x, row.values[metric]) for x, result in zip(xs, measured, strict=True)
                    for row in result.reported if metric in row.values]
        if reported:
            ax.scatter(*zip(*reported, strict=True), marker="^", color="tab:green", edgecolor="black", zorder=3,
                       label="reported by the release")
            shown.append("reported by the release's paper (triangles)")
        if metric in chance:
            ax.axhline(chance[metric], color="tab:red", linestyle="--", linewidth=1.2, label="chance")
            shown.append(f"chance level {chance[metric]:.2f} (dashed)")
        ax.set_ylim(0.0, top)
        ax.set_xticks(xs, [result.label for result in measured], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(metric, fontsize=10, loc="left")
        fig.legend(loc="outside upper right", ncols=3, fontsize=7, frameon=False)  # never over a bar
        path = _save_figure(fig, Path(out_dir) / f"bars_{slug(metric)}.png")
        plots.append(Plot(path, f"{metric} (%): " + ", ".join(shown)))
    return plots


def plot_position_grids(results: Sequence[Result], out_dir: str | os.PathLike,
                        size: tuple[float, float] = (5.0, 4.2)) -> list[Plot]:
    """One heat map per result with a "position" grid (rows: eval gamma, columns: eval gamma_pos), cells annotated."""
    expected = (len(POSITION_GRID_GAMMA), len(POSITION_GRID_GAMMA_POS))
    plots = []
    for index, result in enumerate(result for result in results if "position" in result.grids):
        grid = np.asarray(result.grids["position"], dtype=float)
        if grid.shape != expected:
            raise ValueError(f"{result.label!r}: position grid has shape {grid.shape}, expected {expected}")
        fig = Figure(figsize=size, layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(grid, vmin=0.0, vmax=100.0, cmap="viridis")
        fig.colorbar(image, ax=ax, label="position accuracy (%)")
        ax.set_xticks(range(expected[1]), [f"{value:.2f}" for value in POSITION_GRID_GAMMA_POS])
        ax.set_yticks(range(expected[0]), [f"{value:.2f}" for value in POSITION_GRID_GAMMA])
        ax.set_xlabel("eval gamma_pos")
        ax.set_ylabel("eval gamma")
        for (row, col), value in np.ndenumerate(grid):
            # viridis is dark at the low end: white text there, black on the bright high end
            ax.text(col, row, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if value < 60 else "black")
        ax.set_title(f"{result.label}\nposition accuracy, mean {grid.mean():.2f}", fontsize=9)
        path = _save_figure(fig, Path(out_dir) / f"position_{index:02d}_{slug(result.label)}.png")
        plots.append(Plot(path, f"{result.label}: position accuracy (%) by eval gamma (rows) and gamma_pos "
                                f"(columns), mean {grid.mean():.2f}"))
    return plots


def plot_loss_curves(results: Sequence[Result], out_dir: str | os.PathLike,
                     size: tuple[float, float] = (6.0, 4.0)) -> list[Plot]:
    """One chart per benchmark with a training-loss curve per checkpoint that has one."""
    plots = []
    for benchmark in sorted({name for result in results for name in result.curves}):
        fig = Figure(figsize=size, layout="constrained")
        ax = fig.subplots()
        for result in results:
            if result.curves.get(benchmark):
                ax.plot(*zip(*result.curves[benchmark], strict=True), label=result.label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{benchmark}: training loss", fontsize=10)
        ax.legend(fontsize=7)
        path = _save_figure(fig, Path(out_dir) / f"loss_{slug(benchmark)}.png")
        plots.append(Plot(path, f"{benchmark}: training loss by optimizer step, one curve per checkpoint"))
    return plots


def plot_table(table: PaperTable, members: Sequence[Result], out_dir: str | os.PathLike,
               chance: Mapping[str, float] | None = None) -> list[Plot]:
    """A table's plots in <out_dir>/<table key>/, all of one size so they line up as small multiples."""
    folder = Path(out_dir) / table.key
    size = (max(4.8, 1.6 + 0.8 * len(members)), 3.6)  # room for each checkpoint's bar
    return (plot_metric_bars(members, folder, chance, size) + plot_position_grids(members, folder, size)
            + plot_loss_curves(members, folder, size))


PAGE_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
              "th,td{border:1px solid #bbb;padding:.25em .6em;text-align:right}"
              "th:first-child,td:first-child{text-align:left}tr.chance td{font-style:italic;color:#555}"
              "tr.reported td{font-style:italic;color:#264}"
              ".plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1em;margin:1em 0}"
              "figure{margin:0}figure img{display:block;width:100%;height:auto}"
              "figcaption{font-size:.85em;color:#333;margin-top:.3em}")


def _figures(plots: Sequence[Plot]) -> list[str]:
    """A table's plots as a grid of small multiples, each PNG inlined as a data URI so the page stays one file."""
    if not plots:
        return []
    figures = []
    for plot in plots:
        data = base64.b64encode(Path(plot.path).read_bytes()).decode("ascii")
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(Path(plot.path).stem)}">'
                       f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>")
    return ['<div class="plots">', *figures, "</div>"]


def _html_row(cells: Sequence[str], tag: str = "td", attributes: str = "") -> str:
    return f"<tr{attributes}>" + "".join(f"<{tag}>{html.escape(cell)}</{tag}>" for cell in cells) + "</tr>"


def render_html(results: Sequence[Result], plots: Mapping[str, Sequence[Plot]] | None = None,
                title: str = "droppos-bench report", synthetic: bool = False,
                chance: Mapping[str, float] | None = None) -> str:
    """One self-contained page: the Markdown report's cells as HTML tables, each followed by its plots (`plots`:
    by table key) in a grid, the PNGs inlined as data URIs."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{PAGE_STYLE}</style>", "</head>", "<body>",
             f"<h1>{html.escape(title)}</h1>"]
    if synthetic:
        parts.append(f"<p><strong>{html.escape(SYNTHETIC_NOTE)}</strong></p>")
    for table, members in report_tables(results, synthetic):
        parts += [f"<h2>{html.escape(table.title)}</h2>", "<table>", _html_row(_header(table), "th")]
        parts += [_html_row(row, attributes=' class="reported"' if reported else "")
                  for reported, row in _text_rows(table, members)]
        if levels := _chance_levels(table, chance):
            parts.append(_html_row(_chance_text(levels), attributes=' class="chance"'))
        parts += ["</table>", f"<p>{html.escape(_legend(table))}</p>", *_figures((plots or {}).get(table.key, ()))]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_report(results: Sequence[Result], out_dir: str | os.PathLike, synthetic: bool = False,
                 chance: Mapping[str, float] | None = None) -> Path:
    """Write report.md, results.csv, tables.tex, plots/<table>/*.png and the self-contained report.html; return the
    html. `chance`: a chance level (percent) by metric, shown in every table and bar chart of that metric."""
    out_dir = Path(out_dir)
    # an unknown reference fails before anything is written
    markdown = render_markdown(results, synthetic=synthetic, chance=chance)
    plots = {table.key: plot_table(table, members, out_dir / "plots", chance)
             for table, members in report_tables(results, synthetic)}
    write_bytes_atomic(out_dir / "report.md", markdown.encode())
    write_bytes_atomic(out_dir / "results.csv", render_csv(results, synthetic, chance).encode())
    write_bytes_atomic(out_dir / "tables.tex", render_latex(results, synthetic, chance).encode())
    html_path = out_dir / "report.html"
    write_bytes_atomic(html_path, render_html(results, plots, synthetic=synthetic, chance=chance).encode())
    return html_path
