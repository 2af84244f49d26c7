"""The DropPos paper's reference numbers (Tab. 1-7, S1), so a report can set each of our results beside its row.

All values are percent, keyed by canonical metric names (`METRICS`). Rows missing a value in the paper
("-") simply lack that key. Row ids:

- Tab. 1-4 (ablations, ViT-B 200 ep): the first column as printed: gamma "0.00" .. "0.90", gamma_pos
  "0.25" .. "1.00", sigma "0", "1", "2", "1->0", "2->0", tau "inf", "0.1", "0.5". Their default rows
  ("0.75", "0.75", "1->0", "0.1") are one and the same model.
- Tab. 5, 6 (methods): "<method> <effective epochs>", e.g. "DropPos 800", "MAE 1600", "MoCo v3 600",
  "BootMAE 800"; the paper's own 200-epoch MAE run is "MAE (paper's run) 200"; "(official weights)" is
  dropped; supervised ViT-B/L without pre-training epochs is "supervised". A checkpoint has the same id in
  both tables.
- Tab. 7 (position linear probe): "MoCo v3 600", "MAE 1600", "DropPos 800": the paper prints only the
  method, and its IN1K top-1 column (83.2, 83.6, 84.2) identifies these rows of Tab. 5.
- Tab. S1 (position-embedding init): "sin-cos fixed", "sin-cos learnable", "random learnable".
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import UserInputError

METRICS = (
    "ft_top1", "position", "APb", "APb50", "APb75", "APm", "APm50", "APm75", "mIoU", "aAcc",
    "ft_top1_vitl", "posprobe_pretrained", "posprobe_finetuned",
    "knn_top1", "linear_top1", "linseg_mIoU", "linseg_aAcc",  # the frozen-backbone protocols, not in the paper
)
ABLATION_COLUMNS = ("ft_top1", "position", "APb", "APb50", "APb75", "APm", "APm50", "APm75", "mIoU", "aAcc")
DOWNSTREAM_COLUMNS = ("APb", "APb50", "APb75", "APm", "APm50", "APm75", "mIoU", "aAcc")
# Axes of the paper's position-accuracy grid (Tab. S3): rows are eval gamma, columns eval gamma_pos.
POSITION_GRID_GAMMA = (0.0, 0.25, 0.5, 0.75)
POSITION_GRID_GAMMA_POS = (0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper: rows keyed by id, each a {metric: percent} dict."""

    key: str
    title: str
    row_header: str
    columns: tuple[str, ...]
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    default_row: str | None = None


@dataclass(frozen=True)
class ReportedRow:
    """Numbers a checkpoint's own release paper reports ({metric: percent}), cited by `source` (paper and table):
    the report prints them as a row under the checkpoint's, never as the DropPos paper's."""

    source: str
    values: dict[str, float]


def _table(key: str, title: str, row_header: str, columns: tuple[str, ...],
           printed: dict[str, tuple[float | None, ...]], default_row: str | None = None) -> PaperTable:
    """A table from its printed rows (None where the paper prints "-"), so the data below reads like the paper."""
    rows = {}
    for row_id, values in printed.items():
        rows[row_id] = {metric: value for metric, value in zip(columns, values, strict=True) if value is not None}
    return PaperTable(key, title, row_header, columns, rows, default_row)


# The default model (gamma 0.75, gamma_pos 0.75, sigma 1->0, tau 0.1) is a row of each of Tab. 1-4.
_DEFAULT = (82.96, 87.83, 42.14, 61.99, 46.38, 37.93, 59.23, 40.76, 40.68, 80.14)

_TABLE_LIST = [
    _table("tab1", "Table 1: patch mask ratio gamma (ViT-B, 200 ep)", "gamma", ABLATION_COLUMNS, {
        "0.00": (81.94, 59.79, 34.10, 52.80, 37.17, 31.24, 50.27, 33.03, 31.66, 75.86),
        "0.25": (82.02, 79.62, 37.05, 56.23, 40.18, 33.60, 53.51, 35.84, 32.80, 76.92),
        "0.50": (82.78, 87.27, 38.45, 57.83, 41.87, 34.88, 55.14, 37.50, 36.33, 78.25),
        "0.75": _DEFAULT,
        "0.90": (82.81, 65.12, 41.06, 60.92, 44.57, 37.04, 58.23, 39.62, 40.30, 80.09),
    }, default_row="0.75"),
    _table("tab2", "Table 2: position mask ratio gamma_pos (ViT-B, 200 ep)", "gamma_pos", ABLATION_COLUMNS, {
        "0.25": (82.71, 65.19, 37.98, 57.65, 41.39, 34.61, 54.79, 36.93, 36.15, 78.16),
        "0.50": (82.86, 86.70, 39.23, 58.77, 42.99, 35.60, 56.23, 37.89, 37.82, 78.60),
        "0.75": _DEFAULT,
        "1.00": (82.66, 19.44, 41.48, 61.50, 45.18, 37.41, 58.81, 39.92, 39.98, 80.19),
    }, default_row="0.75"),
    _table("tab3", "Table 3: position smoothing sigma (ViT-B, 200 ep)", "sigma", ABLATION_COLUMNS, {
        "0": (82.85, 88.81, 40.32, 59.89, 43.90, 36.45, 57.09, 38.88, 38.32, 79.22),
        "1": (82.91, 87.13, 40.19, 59.76, 43.81, 36.30, 57.06, 38.87, 38.60, 79.17),
        "2": (82.79, 69.48, 40.16, 59.94, 43.92, 36.32, 57.32, 38.88, 38.69, 79.30),
        "1->0": _DEFAULT,
        "2->0": (82.88, 87.65, 40.46, 60.03, 44.21, 36.53, 57.20, 39.30, 38.79, 79.43),
    }, default_row="1->0"),
    _table("tab4", "Table 4: attentive reconstruction temperature tau (ViT-B, 200 ep)", "tau", ABLATION_COLUMNS, {
        "inf": (82.84, 88.66, 40.56, 60.48, 44.15, 36.78, 57.64, 39.46, 38.38, 79.36),
        "0.1": _DEFAULT,
        "0.5": (82.86, 87.78, 40.73, 60.33, 44.77, 36.71, 57.72, 39.38, 38.80, 79.62),
    }, default_row="0.1"),
    _table("tab5", "Table 5: ImageNet-1K fine-tune top-1", "method", ("ft_top1", "ft_top1_vitl"), {
        "supervised": (80.9, 82.6),
        "MAE (paper's run) 200": (82.2, 83.3),
        "DropPos 200": (83.0, 83.7),
        "DINO 1600": (82.8, None),
        "MoCo v3 600": (83.2, 84.1),
        "BEiT 800": (83.2, 85.2),
        "MAE 1600": (83.6, 85.9),
        "SimMIM 800": (83.8, None),
        "SemMAE 800": (83.4, None),
        "LocalMIM 1600": (84.0, None),
        "HPM 800": (84.2, 85.8),
        "iBOT 1600": (84.0, None),
        "BootMAE 800": (84.2, 85.9),
        "DropPos 800": (84.2, 85.8),
    }),
    _table("tab6", "Table 6: COCO Mask R-CNN and ADE20K UperNet (ViT-B)", "method", DOWNSTREAM_COLUMNS, {
        "MAE (paper's run) 200": (40.1, 60.5, 44.1, 36.4, 57.8, 39.3, 40.5, 80.1),
        "DropPos 200": (42.1, 62.0, 46.4, 37.9, 59.2, 40.8, 40.7, 80.1),
        "MoCo v3 600": (43.7, 65.7, 47.7, 39.1, 62.0, 41.8, 44.7, 81.5),
        "MAE 1600": (47.3, 68.2, 52.5, 42.4, 65.3, 45.6, 47.0, 82.7),
        "BootMAE 800": (47.3, 67.9, 52.1, 42.3, 65.0, 45.8, 47.3, 83.0),
        "SemMAE 800": (45.6, 66.2, 55.2, 40.9, 63.3, 44.4, 44.9, 82.0),  # APb75 55.2 as printed
        "LocalMIM 1600": (47.4, 67.7, 52.2, 42.2, 64.8, 45.5, 47.1, 83.1),
        "DropPos 800": (47.7, 68.3, 52.8, 42.6, 65.3, 46.2, 47.8, 82.8),
    }),
    _table("tab7", "Table 7: position linear probe (ViT-B)", "method",
           ("posprobe_pretrained", "posprobe_finetuned", "ft_top1"), {
               "MoCo v3 600": (43.2, 78.0, 83.2),
               "MAE 1600": (63.1, 82.5, 83.6),
               "DropPos 800": (77.3, 88.0, 84.2),
           }),
    _table("tabS1", "Table S1: position-embedding initialisation (ViT-B, 200 ep)", "init", ("ft_top1", "mIoU"), {
        "sin-cos fixed": (82.96, 40.68),
        "sin-cos learnable": (82.81, 39.37),
        "random learnable": (82.48, 38.72),
    }, default_row="sin-cos fixed"),
]
TABLES: dict[str, PaperTable] = {table.key: table for table in _TABLE_LIST}


def parse_reference(ref: str) -> tuple[PaperTable, str]:
    """(table, row id) of a "tabN:row id" reference; ValueError listing the valid choices otherwise."""
    key, sep, row_id = ref.partition(":")
    if not sep or key not in TABLES:
        raise UserInputError(f"unknown paper reference {ref!r}: expected '<table>:<row id>' with table one "
                             f"of {', '.join(TABLES)}")
    table = TABLES[key]
    if row_id not in table.rows:
        raise UserInputError(f"unknown paper reference {ref!r}: {key} has rows {', '.join(map(repr, table.rows))}")
    return table, row_id


def reference_value(ref: str, metric: str) -> float | None:
    """The paper's value of `metric` in the row `ref` ("tab6:DropPos 800"), None where the paper has none."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; metrics are {', '.join(METRICS)}")
    table, row_id = parse_reference(ref)
    return table.rows[row_id].get(metric)
