"""The paper's reference numbers are transcribed completely, and reports set our numbers beside them exactly."""
from __future__ import annotations

import csv
import html
import io
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.harness.reference import TABLES, ReportedRow, reference_value
from benchmarks.harness.report import (
    Result,
    format_cell,
    paper_tables,
    plot_loss_curves,
    render_csv,
    render_latex,
    render_markdown,
    write_report,
)

# the paper's tables as numbers, kept with the tests (the project's shared copy may not sit beside a checkout)
REFERENCE_FILE = Path(__file__).parent / "data" / "paper-reference-results.md"
SHARED_COPY = Path(__file__).parents[2].parent / "shared/paper/reference-results.md"
SECTIONS = {"Table 1": "tab1", "Table 2": "tab2", "Table 3": "tab3", "Table 4": "tab4", "Table 5": "tab5",
            "Table 6": "tab6", "Table 7": "tab7", "Table S1": "tabS1"}
HEADER_METRICS = {
    "IN1K ft": "ft_top1", "ViT-B": "ft_top1", "IN1K top-1": "ft_top1", "ViT-L": "ft_top1_vitl",
    "position": "position", "APb": "APb", "APb50": "APb50", "APb75": "APb75", "APm": "APm", "APm50": "APm50",
    "APm75": "APm75", "mIoU": "mIoU", "ADE20K mIoU": "mIoU", "aAcc": "aAcc",
    "pre-trained": "posprobe_pretrained", "fine-tuned (IN1K)": "posprobe_finetuned",
}
MAE_PAPER_RUN = {"MAE (paper's own run)": "MAE (paper's run)", "MAE (paper's own pre-training)": "MAE (paper's run)"}
TAB7_IDS = {"MoCo v3": "MoCo v3 600", "MAE": "MAE 1600", "DropPos": "DropPos 800"}
# Tab. S3(d): the default model's position accuracy, rows eval gamma, columns eval gamma_pos
DEFAULT_GRID = [[97.19, 98.69, 98.20, 92.30], [96.78, 98.26, 97.66, 91.05], [97.26, 96.82, 95.66, 89.12],
                [79.94, 78.10, 68.73, 40.24]]


def _markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """{"tab1": [header cells, row cells, ...]} of the reference file's sections Table 1-7 and S1."""
    tables: dict[str, list[list[str]]] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("## "):
            key = SECTIONS.get(line[3:].split(":")[0])
        elif key and line.startswith("|") and not line.startswith("|---"):
            tables.setdefault(key, []).append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return tables


def _row_id(key: str, cells: list[str]) -> str:
    """Our row id of a printed row (the scheme of reference.py's docstring)."""
    if key in ("tab5", "tab6"):
        method = cells[0].removesuffix(" (official weights)")
        method = MAE_PAPER_RUN.get(method, method)
        return method if cells[1] == "-" else f"{method} {cells[1]}"
    if key == "tab7":
        return TAB7_IDS[cells[0]]
    if key == "tabS1":
        return f"{cells[0]} {'fixed' if cells[1].startswith('no') else 'learnable'}"
    return cells[0]


def test_tables_hold_every_number_of_the_reference_file_and_no_other():
    if SHARED_COPY.exists():  # a checkout beside the project's shared folder: the kept copy must be current
        assert SHARED_COPY.read_text() == REFERENCE_FILE.read_text(), f"{REFERENCE_FILE} differs from {SHARED_COPY}"
    parsed = _markdown_tables(REFERENCE_FILE.read_text())
    assert set(parsed) == set(TABLES)
    for key, (header, *printed) in parsed.items():
        metrics = [HEADER_METRICS.get(cell) for cell in header]
        expected = {_row_id(key, cells): {m: float(cell) for m, cell in zip(metrics, cells, strict=True)
                                          if m is not None and cell != "-"} for cells in printed}
        table = TABLES[key]
        assert table.row_header == header[0], key
        assert table.columns == tuple(m for m in metrics if m is not None), key
        assert list(table.rows) == list(expected), key
        assert table.rows == expected, key


def test_hand_picked_reference_values():
    assert reference_value("tab1:0.75", "APb") == 42.14
    assert reference_value("tab2:1.00", "position") == 19.44
    assert reference_value("tab3:1->0", "mIoU") == 40.68
    assert reference_value("tab4:inf", "position") == 88.66
    assert reference_value("tab5:DINO 1600", "ft_top1") == 82.8
    assert reference_value("tab5:DINO 1600", "ft_top1_vitl") is None
    assert reference_value("tab5:supervised", "ft_top1_vitl") == 82.6
    assert reference_value("tab6:SemMAE 800", "APb75") == 55.2
    assert reference_value("tab6:MAE (paper's run) 200", "APm") == 36.4
    assert reference_value("tab7:DropPos 800", "posprobe_finetuned") == 88.0
    assert reference_value("tabS1:random learnable", "mIoU") == 38.72
    assert reference_value("tab6:DropPos 800", "ft_top1") is None


def test_default_rows_are_one_model():
    defaults = [TABLES[key].rows[TABLES[key].default_row] for key in ("tab1", "tab2", "tab3", "tab4")]
    assert all(row == defaults[0] for row in defaults)
    s1 = TABLES["tabS1"].rows[TABLES["tabS1"].default_row]
    assert s1 == {"ft_top1": defaults[0]["ft_top1"], "mIoU": defaults[0]["mIoU"]}


@pytest.mark.parametrize("ref, named", [("tab8:0.75", "tab1, tab2"), ("tab6:DropPos 1600", "'DropPos 800'"),
                                        ("DropPos 800", "tab1, tab2")])
def test_unknown_reference_names_it_and_the_valid_ones(ref, named):
    with pytest.raises(ValueError, match=ref) as error:
        reference_value(ref, "APb")
    assert named in str(error.value)


@pytest.fixture()
def results() -> list[Result]:
    return [
        Result("DropPos 200ep (ours)", "tab6:DropPos 200", {"APb": 42.31, "APm": 37.5, "mIoU": 40.7, "ft_top1": 82.9}),
        Result("MAE 200ep", "tab6:MAE (paper's run) 200", {"APb": 39.87, "mIoU": 41.02}),
        Result("random init", None, {"mIoU": 20.5, "ft_top1": 70.123}),
        Result("gamma 0.75", "tab1:0.75", {"ft_top1": 82.9, "position": 88.0}, grids={"position": DEFAULT_GRID}),
    ]


LEGEND = ("Cells: ours (paper, ours - paper); '- (paper)' where we have no value; '-' where neither has one. Rows "
          "'reported in ...': the release's own paper, its recipe, as cited.")
CHANCE = {"ft_top1": 0.1, "position": 0.51}
EXPECTED_MARKDOWN = "\n".join([  # with CHANCE
    "# droppos-bench report",
    "",
    "## Table 1: patch mask ratio gamma (ViT-B, 200 ep)",
    "",
    "| checkpoint (gamma) | ft_top1 | position | APb | APb50 | APb75 | APm | APm50 | APm75 | mIoU | aAcc |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    "| gamma 0.75 (0.75) | 82.90 (82.96, -0.06) | 88.00 (87.83, +0.17) | - (42.14) | - (61.99) | - (46.38) "
    "| - (37.93) | - (59.23) | - (40.76) | - (40.68) | - (80.14) |",
    "| chance level | 0.10 | 0.51 | - | - | - | - | - | - | - | - |",
    "",
    LEGEND,
    "",
    "## Table 6: COCO Mask R-CNN and ADE20K UperNet (ViT-B)",
    "",
    "| checkpoint (method) | APb | APb50 | APb75 | APm | APm50 | APm75 | mIoU | aAcc | ft_top1 |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    "| DropPos 200ep (ours) (DropPos 200) | 42.31 (42.10, +0.21) | - (62.00) | - (46.40) | 37.50 (37.90, -0.40) "
    "| - (59.20) | - (40.80) | 40.70 (40.70, +0.00) | - (80.10) | 82.90 |",
    "| MAE 200ep (MAE (paper's run) 200) | 39.87 (40.10, -0.23) | - (60.50) | - (44.10) | - (36.40) | - (57.80) "
    "| - (39.30) | 41.02 (40.50, +0.52) | - (80.10) | - |",
    "| chance level | - | - | - | - | - | - | - | - | 0.10 |",
    "",
    LEGEND,
    "",
    "## Other checkpoints",
    "",
    "| checkpoint | ft_top1 | mIoU |",
    "| --- | --- | --- |",
    "| random init | 70.12 | 20.50 |",
    "| chance level | 0.10 | - |",
    "",
    LEGEND,
    "",
])
EXPECTED_SYNTHETIC = "\n".join([  # with CHANCE: every measured number, no paper value, no delta
    "# droppos-bench report",
    "",
    "> Note: these numbers come from tiny models and/or synthetic data. They can show an effect at toy scale, never a "
    "reproduction of the paper's numbers.",
    "",
    "## Synthetic data, tiny models (not comparable with the paper)",
    "",
    "| checkpoint | ft_top1 | position | APb | APm | mIoU |",
    "| --- | --- | --- | --- | --- | --- |",
    "| DropPos 200ep (ours) | 82.90 | - | 42.31 | 37.50 | 40.70 |",
    "| MAE 200ep | - | - | 39.87 | - | 41.02 |",
    "| random init | 70.12 | - | - | - | 20.50 |",
    "| gamma 0.75 | 82.90 | 88.00 | - | - | - |",
    "| chance level | 0.10 | 0.51 | - | - | - |",
    "",
    "Cells: our value; '-' where not measured. No paper numbers: tiny models are not comparable.",
    "",
])


def test_markdown_is_exact(results):
    assert render_markdown(results, chance=CHANCE) == EXPECTED_MARKDOWN
    without = "\n".join(line for line in EXPECTED_MARKDOWN.split("\n") if "chance level" not in line)
    assert render_markdown(results) == without
    assert "synthetic" not in render_markdown(results)


def test_a_synthetic_report_has_no_paper_table_and_no_paper_numbers(results):
    assert render_markdown(results, synthetic=True, chance=CHANCE) == EXPECTED_SYNTHETIC
    rows = list(csv.DictReader(io.StringIO(render_csv(results, synthetic=True))))
    assert {row["table"] for row in rows} == {"synthetic"}
    assert not any(row["paper"] or row["delta"] or row["reference"] for row in rows)
    latex = render_latex(results, synthetic=True)
    assert "Synthetic data" in latex and "Table" not in latex and "$^" not in latex


def test_tables_in_paper_order_with_results_in_input_order(results):
    grouped = paper_tables(results)
    assert [table.key for table, _ in grouped] == ["tab1", "tab6", "other"]
    assert [r.label for r in grouped[1][1]] == ["DropPos 200ep (ours)", "MAE 200ep"]
    assert grouped[1][0].columns == (*TABLES["tab6"].columns, "ft_top1")  # measured beyond the paper's columns
    assert grouped[2][0].columns == ("ft_top1", "mIoU")  # canonical order, not the order of the dict


def test_cells_print_consistent_deltas():
    assert format_cell(40.7, 40.7) == "40.70 (40.70, +0.00)"  # never "-0.00"
    assert format_cell(82.904, 82.9) == "82.90 (82.90, +0.00)"  # the delta of the printed numbers
    assert format_cell(None, None) == "-"


def test_csv_has_one_line_per_cell(results):
    rows = list(csv.reader(io.StringIO(render_csv(results))))
    assert rows[0] == ["table", "label", "reference", "metric", "ours", "paper", "delta", "source"]
    assert len(rows) == 1 + 10 + 2 * 9 + 2
    assert ["tab6", "DropPos 200ep (ours)", "tab6:DropPos 200", "APm", "37.5", "37.9", "-0.40", ""] in rows
    assert ["other", "random init", "", "ft_top1", "70.123", "", "", ""] in rows
    with_chance = list(csv.reader(io.StringIO(render_csv(results, chance=CHANCE))))
    assert [row for row in with_chance if row[1] != "chance level"] == rows
    assert [row for row in with_chance if row[1] == "chance level"] == [
        ["tab1", "chance level", "", "ft_top1", "0.1", "", "", ""],
        ["tab1", "chance level", "", "position", "0.51", "", "", ""],
        ["tab6", "chance level", "", "ft_top1", "0.1", "", "", ""],
        ["other", "chance level", "", "ft_top1", "0.1", "", "", ""],
    ]


def test_latex_escapes_labels_and_marks_deltas(results):
    latex = render_latex([*results, Result("run_7 at 100% lr", "tab3:1->0", {"ft_top1": 83.0})])
    assert r"run\_7 at 100\% lr (1-\textgreater{}0) & 83.00$^{+0.04}$ & -- (87.83) &" in latex
    assert r"DropPos 200ep (ours) (DropPos 200) & 42.31$^{+0.21}$ & -- (62.00)" in latex
    assert latex.count(r"\begin{tabular}") == latex.count(r"\bottomrule") == 4
    assert "chance" not in latex
    chance = render_latex(results, chance={"position": 0.51})
    assert "\\midrule\nchance level & -- & 0.51 & -- & -- & -- & -- & -- & -- & -- & -- \\\\\n\\bottomrule" in chance
    assert chance.count("chance level") == 1  # only Table 1 has a position column


def test_write_report_writes_every_file_and_a_self_contained_page(results, tmp_path):
    page = write_report(results, tmp_path / "report", chance=CHANCE)
    out = tmp_path / "report"
    assert page == out / "report.html"
    assert (out / "report.md").read_text() == EXPECTED_MARKDOWN
    assert (out / "results.csv").read_text() == render_csv(results, chance=CHANCE)
    assert (out / "tables.tex").read_text() == render_latex(results, chance=CHANCE)
    plots = sorted(str(path.relative_to(out / "plots")) for path in (out / "plots").rglob("*.png"))
    assert plots == ["other/bars_ft-top1.png", "other/bars_miou.png", "tab1/bars_ft-top1.png",
                     "tab1/bars_position.png", "tab1/position_00_gamma-0.75.png", "tab6/bars_apb.png",
                     "tab6/bars_apm.png", "tab6/bars_ft-top1.png", "tab6/bars_miou.png"]
    text = page.read_text()
    assert text.count('<img src="data:image/png;base64,iVBOR') == len(plots)  # iVBOR: the PNG signature
    assert all(html.escape(result.label) in text for result in results)
    assert "<td>42.31 (42.10, +0.21)</td>" in text
    assert '<tr class="chance"><td>chance level</td><td>0.10</td><td>0.51</td><td>-</td>' in text
    assert not [path for path in out.rglob(".*")]  # no temporary file left behind


def test_each_table_has_its_plots_as_a_grid_of_same_sized_small_multiples(results, tmp_path):
    text = write_report(results, tmp_path, chance=CHANCE).read_text()
    assert "grid-template-columns:repeat(auto-fill,minmax(320px,1fr))" in text
    sections = text.split("<h2>")[1:]
    assert [section.count("<figure><img") for section in sections] == [3, 4, 2]  # Table 1, Table 6, other
    assert all(section.count('<div class="plots">') == 1 for section in sections)
    assert "<figcaption>ft_top1 (%): ours (bars), paper (diamonds), chance level 0.10 (dashed)</figcaption>" in text
    assert "<figcaption>mIoU (%): ours (bars)</figcaption>" in text
    for table in ("tab1", "tab6", "other"):
        sizes = {Image.open(path).size for path in (tmp_path / "plots" / table).glob("*.png")}
        assert len(sizes) == 1, (table, sizes)


def test_a_synthetic_page_has_no_paper_numbers(results, tmp_path):
    text = write_report(results, tmp_path, synthetic=True).read_text()
    assert "Table 6" not in text and "(42.10" not in text and "paper (diamonds)" not in text
    assert "<td>42.31</td>" in text and text.count("<figure><img") == 6
    assert (tmp_path / "report.md").read_text() == render_markdown(results, synthetic=True)


def test_unknown_reference_fails_before_writing(results, tmp_path):
    bad = Result("typo", "tab6:DropPos 1600", {"APb": 1.0})
    with pytest.raises(ValueError, match="tab6:DropPos 1600"):
        write_report([*results, bad], tmp_path)
    assert not list(tmp_path.iterdir())


def test_position_grid_must_be_four_by_four(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_report([Result("flat", None, {"position": 50.0}, grids={"position": [[50.0] * 16]})], tmp_path)


def test_loss_curves_one_chart_per_benchmark(tmp_path):
    results = [Result("a", None, {}, curves={"seg": [(10, 2.0), (20, 1.5)], "det": [(5, 3.0)]}),
               Result("b", None, {}, curves={"seg": [(10, 2.2)]}), Result("c", None, {})]
    plots = plot_loss_curves(results, tmp_path)
    assert [plot.path.name for plot in plots] == ["loss_det.png", "loss_seg.png"]
    assert all(plot.path.read_bytes().startswith(b"\x89PNG") for plot in plots)


DINO_PAPER = ReportedRow("DINO (Caron et al., 2021), Tab. 2", {"knn_top1": 76.1, "linear_top1": 78.2})
DINO_FT = ReportedRow("iBOT (Zhou et al., 2022), Tab. 3", {"ft_top1": 82.8})


def test_reported_rows_sit_under_their_checkpoint_with_their_source_in_every_format(tmp_path):
    dino = Result("DINO 400ep", "tab5:DINO 1600", {"ft_top1": 82.5, "knn_top1": 75.0}, reported=(DINO_PAPER, DINO_FT))
    results = [dino, Result("random init", None, {"knn_top1": 3.0})]
    tables = _markdown_tables(render_markdown(results))
    # Tab. 5 gains the knn / linear columns (reported numbers are never dropped), the rows sit under DINO's
    assert [row for row in tables["tab5"] if row[0] != "---"] == [
        ["checkpoint (method)", "ft_top1", "ft_top1_vitl", "knn_top1", "linear_top1"],
        ["DINO 400ep (DINO 1600)", "82.50 (82.80, -0.30)", "-", "75.00", "-"],
        ["DINO 400ep: reported in DINO (Caron et al., 2021), Tab. 2", "-", "-", "76.10", "78.20"],
        ["DINO 400ep: reported in iBOT (Zhou et al., 2022), Tab. 3", "82.80", "-", "-", "-"],
    ]
    assert "| random init | 3.00 |" in render_markdown(results)
    rows = list(csv.reader(io.StringIO(render_csv(results))))
    reported = [row for row in rows[1:] if row[-1]]
    assert reported == [
        ["tab5", "DINO 400ep", "", "knn_top1", "", "76.1", "", "DINO (Caron et al., 2021), Tab. 2"],
        ["tab5", "DINO 400ep", "", "linear_top1", "", "78.2", "", "DINO (Caron et al., 2021), Tab. 2"],
        ["tab5", "DINO 400ep", "", "ft_top1", "", "82.8", "", "iBOT (Zhou et al., 2022), Tab. 3"],
    ]
    latex = render_latex(results)
    assert (r"\textit{DINO 400ep: reported in DINO (Caron et al., 2021), Tab. 2} & \textit{--} & \textit{--} & "
            r"\textit{76.10} & \textit{78.20} \\") in latex
    page = write_report(results, tmp_path).read_text()
    assert ('<tr class="reported"><td>DINO 400ep: reported in iBOT (Zhou et al., 2022), Tab. 3</td><td>82.80</td>'
            in page)
    assert "knn_top1 (%): ours (bars), reported by the release&#x27;s paper (triangles)" in page
