"""Reports of our results beside the paper's numbers: Markdown, CSV, LaTeX, PNG plots and one offline HTML page.

A cell reads `ours (paper, delta)`. The delta is taken between the two numbers as printed (2 decimals), so
the three printed numbers always agree. Every writer goes through a temporary file, so a reader (a browser
refreshing the page, a CI job collecting artefacts) never sees half a report.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.safe_io import write_bytes_atomic

from .reference import METRICS, POSITION_GRID_GAMMA, POSITION_GRID_GAMMA_POS, TABLES, PaperTable, parse_reference
from .suite import slug

OTHER_KEY = "other"
LEGEND = "Cells: ours (paper, ours - paper); '- (paper)' where we have no value; '-' where neither has one."
SYNTHETIC_NOTE = ("Note: these numbers come from tiny models and/or synthetic data. They show that the pipeline "
                  "runs end to end and say nothing about DropPos.")
CSV_FIELDS = ("table", "label", "reference", "metric", "ours", "paper", "delta")
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
            measured = _ordered_metrics(m for result in grouped[table.key] for m in result.metrics)
            extra = tuple(m for m in measured if m not in table.columns)
            tables.append((replace(table, columns=table.columns + extra), grouped[table.key]))
    return tables


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
    first = "checkpoint" if table.key == OTHER_KEY else f"checkpoint ({table.row_header})"
    return [first, *table.columns]


def _pairs(table: PaperTable, result: Result) -> list[tuple[float | None, float | None]]:
    return [(result.metrics.get(metric), _paper_value(result, metric)) for metric in table.columns]


def _text_rows(table: PaperTable, results: Sequence[Result]) -> list[list[str]]:
    """The cells of one table as text, shared by the Markdown and HTML renderings."""
    return [[_row_label(result), *(format_cell(ours, paper) for ours, paper in _pairs(table, result))]
            for result in results]


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def render_markdown(results: Sequence[Result], title: str = "droppos-bench report", synthetic: bool = False) -> str:
    """The report as Markdown: one table per paper table, deterministic so it can be diffed and tested."""
    lines = [f"# {title}", ""]
    if synthetic:
        lines += [f"> {SYNTHETIC_NOTE}", ""]
    for table, members in paper_tables(results):
        header = _header(table)
        lines += [f"## {table.title}", "", _markdown_row(header), _markdown_row(["---"] * len(header))]
        lines += [_markdown_row(row) for row in _text_rows(table, members)]
        lines += ["", LEGEND, ""]
    return "\n".join(lines)


def render_csv(results: Sequence[Result]) -> str:
    """Long format, one line per table cell (table, label, reference, metric, ours, paper, delta); empty = none."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for table, members in paper_tables(results):
        for result in members:
            for metric, (ours, paper) in zip(table.columns, _pairs(table, result), strict=True):
                delta = "" if ours is None or paper is None else f"{_printed_delta(ours, paper):.2f}"
                writer.writerow([table.key, result.label, result.reference or "", metric,
                                 "" if ours is None else ours, "" if paper is None else paper, delta])
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _latex_cell(ours: float | None, paper: float | None) -> str:
    if ours is None:
        return "--" if paper is None else f"-- ({paper:.2f})"
    if paper is None:
        return f"{ours:.2f}"
    return f"{ours:.2f}$^{{{_printed_delta(ours, paper):+.2f}}}$"


def render_latex(results: Sequence[Result]) -> str:
    """One booktabs tabular per table; a cell is ours with ours - paper as a superscript."""
    blocks = []
    for table, members in paper_tables(results):
        lines = [f"% {table.title}", r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
                 " & ".join(_latex_escape(cell) for cell in _header(table)) + r" \\", r"\midrule"]
        for result in members:
            cells = [_latex_escape(_row_label(result)), *(_latex_cell(o, p) for o, p in _pairs(table, result))]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        blocks.append("\n".join(lines))
    return "% needs \\usepackage{booktabs}\n\n" + "\n\n".join(blocks) + "\n"


def _save_figure(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def plot_metric_bars(results: Sequence[Result], out_dir: str | os.PathLike) -> list[Path]:
    """One bar chart per measured metric: our checkpoints as bars, the paper's value as a diamond."""
    paths = []
    for metric in _ordered_metrics(m for result in results for m in result.metrics):
        measured = [result for result in results if metric in result.metrics]
        fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(measured)), 4.0), layout="constrained")
        ax = fig.subplots()
        xs = np.arange(len(measured))
        bars = ax.bar(xs, [result.metrics[metric] for result in measured], color="tab:blue", label="ours")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        papers = [(x, _paper_value(result, metric)) for x, result in zip(xs, measured, strict=True)]
        papers = [(x, value) for x, value in papers if value is not None]
        if papers:
            ax.scatter(*zip(*papers, strict=True), marker="D", color="tab:orange", edgecolor="black", zorder=3,
                       label="paper")
        ax.set_xticks(xs, [result.label for result in measured], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(metric)
        ax.legend(loc="lower right", fontsize=8)
        paths.append(_save_figure(fig, Path(out_dir) / f"bars_{slug(metric)}.png"))
    return paths


def plot_position_grids(results: Sequence[Result], out_dir: str | os.PathLike) -> list[Path]:
    """One heat map per result with a "position" grid (rows: eval gamma, columns: eval gamma_pos), cells annotated."""
    expected = (len(POSITION_GRID_GAMMA), len(POSITION_GRID_GAMMA_POS))
    paths = []
    for index, result in enumerate(result for result in results if "position" in result.grids):
        grid = np.asarray(result.grids["position"], dtype=float)
        if grid.shape != expected:
            raise ValueError(f"{result.label!r}: position grid has shape {grid.shape}, expected {expected}")
        fig = Figure(figsize=(5.0, 4.2), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(grid, vmin=0.0, vmax=100.0, cmap="viridis")
        fig.colorbar(image, ax=ax, label="position accuracy (%)")
        ax.set_xticks(range(expected[1]), [f"{value:.2f}" for value in POSITION_GRID_GAMMA_POS])
        ax.set_yticks(range(expected[0]), [f"{value:.2f}" for value in POSITION_GRID_GAMMA])
        ax.set_xlabel("eval gamma_pos")
        ax.set_ylabel("eval gamma")
        for (row, col), value in np.ndenumerate(grid):
            # viridis is dark at the low end: white text there, black on the bright high end
            ax.text(col, row, f"{value:.1f}", ha="center", va="center", color="white" if value < 60 else "black")
        ax.set_title(f"{result.label}\nposition accuracy, mean {grid.mean():.2f}", fontsize=10)
        paths.append(_save_figure(fig, Path(out_dir) / f"position_{index:02d}_{slug(result.label)}.png"))
    return paths


def render_html(results: Sequence[Result], plots: Sequence[Path], title: str = "droppos-bench report",
                synthetic: bool = False) -> str:
    """One self-contained page: the Markdown report's cells as HTML tables, the PNGs inlined as data URIs."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "th,td{border:1px solid #bbb;padding:.25em .6em;text-align:right}"
             "th:first-child,td:first-child{text-align:left}img{max-width:100%}</style>",
             "</head>", "<body>", f"<h1>{html.escape(title)}</h1>"]
    if synthetic:
        parts.append(f"<p><strong>{html.escape(SYNTHETIC_NOTE)}</strong></p>")
    for table, members in paper_tables(results):
        parts += [f"<h2>{html.escape(table.title)}</h2>", "<table>",
                  "<tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in _header(table)) + "</tr>"]
        parts += ["<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                  for row in _text_rows(table, members)]
        parts += ["</table>", f"<p>{html.escape(LEGEND)}</p>"]
    if plots:
        parts.append("<h2>Plots</h2>")
    for path in plots:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}"></p>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def plot_loss_curves(results: Sequence[Result], out_dir: str | os.PathLike) -> list[Path]:
    """One chart per benchmark with a training-loss curve per checkpoint that has one."""
    paths = []
    for benchmark in sorted({name for result in results for name in result.curves}):
        fig = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = fig.subplots()
        for result in results:
            if result.curves.get(benchmark):
                ax.plot(*zip(*result.curves[benchmark], strict=True), label=result.label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{benchmark}: training loss")
        ax.legend(fontsize=8)
        paths.append(_save_figure(fig, Path(out_dir) / f"loss_{slug(benchmark)}.png"))
    return paths


def write_report(results: Sequence[Result], out_dir: str | os.PathLike, synthetic: bool = False) -> Path:
    """Write report.md, results.csv, tables.tex, plots/*.png and the self-contained report.html; return the html."""
    out_dir = Path(out_dir)
    markdown = render_markdown(results, synthetic=synthetic)  # an unknown reference fails before anything is written
    plots = (plot_metric_bars(results, out_dir / "plots") + plot_position_grids(results, out_dir / "plots")
             + plot_loss_curves(results, out_dir / "plots"))
    write_bytes_atomic(out_dir / "report.md", markdown.encode())
    write_bytes_atomic(out_dir / "results.csv", render_csv(results).encode())
    write_bytes_atomic(out_dir / "tables.tex", render_latex(results).encode())
    html_path = out_dir / "report.html"
    write_bytes_atomic(html_path, render_html(results, plots, synthetic=synthetic).encode())
    return html_path
