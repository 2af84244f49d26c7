"""Suite files: which checkpoints go through which benchmarks with which recipes, checked line by line.

A suite is YAML:

    name: paper-table6
    data: {imagenet: /data/imagenet, coco: /data/coco, ade: /data/ADEChallengeData2016}
    checkpoints:
      - {label: DropPos 200ep (ours), path: work_dirs/droppos_vit_base_200ep/encoder.safetensors, epochs: 200,
         reference: "tab6:DropPos 200", overrides: {seg: {optim.lr: 7.0e-4}}}
      - {label: random init, random_init: true}
    benchmarks:
      - {name: det, config: mask_rcnn_vit_base_1x}
      - {name: seg, config: upernet_vit_base_80k, overrides: {schedule.iterations: 80000}}
    chance: {ft_top1: 0.1, position: 0.51}   # optional: chance level (percent) per report metric

`checkpoints_from: <suite>` (a shipped suite's name or a file) takes that suite's checkpoints, before the file's own
`checkpoints:` (then optional), and its data roots where the file names none: other benchmarks on the same
checkpoints.

A checkpoint's `reported:` lists numbers its release's own paper reports, each entry with its `source` (paper and
table) and report metrics in percent; the report shows them as rows of their own under the checkpoint's row:

      - label: DINO 400ep
        path: checkpoints/zoo/dino_vitbase16_pretrain.pth
        reported:
          - {source: "DINO (Caron et al., ICCV 2021), Tab. 2", knn_top1: 76.1, linear_top1: 78.2}

Paths (checkpoints, data roots, work_dir) and text override values (`data.root: $DATA/ramps`) may use environment
variables ($DATA/imagenet). Every mistake (an unknown key, a missing checkpoint file, an unknown benchmark) is
reported with the suite file's line, before anything runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import MissingInputError, UserInputError

from .reference import ReportedRow, parse_reference

# benchmark name -> (CLI words, dataset kind, {metrics.json key: (report key, factor to percent)})
BENCHMARKS: dict[str, tuple[tuple[str, ...], str, dict[str, tuple[str, float]]]] = {
    "cls.finetune": (("cls", "finetune"), "imagenet", {"top1": ("ft_top1", 1.0)}),
    "cls.linprobe": (("cls", "linprobe"), "imagenet", {"top1": ("linprobe_top1", 1.0)}),
    "cls.posprobe": (("cls", "posprobe"), "imagenet", {"top1": ("posprobe_pretrained", 1.0)}),
    "cls.posprobe_finetuned": (("cls", "posprobe"), "imagenet", {"top1": ("posprobe_finetuned", 1.0)}),
    "det": (("det", "train"), "coco", {k: (k, 100.0) for k in ("APb", "APb50", "APb75", "APm", "APm50", "APm75")}),
    "seg": (("seg", "train"), "ade", {"mIoU": ("mIoU", 1.0), "aAcc": ("aAcc", 1.0)}),
    "posacc": (("posacc",), "imagenet", {"average": ("position", 1.0)}),
    "cls.knn": (("cls", "knn"), "imagenet", {"top1": ("knn_top1", 1.0)}),
    "cls.linear": (("cls", "linear"), "imagenet", {"top1": ("linear_top1", 1.0)}),
    "seg.linear": (("seg", "linear"), "ade", {"mIoU": ("linseg_mIoU", 1.0), "aAcc": ("linseg_aAcc", 1.0)}),
}
# the metric keys of a report (BENCHMARKS' report keys), in benchmark order
REPORT_METRICS = tuple(dict.fromkeys(key for _, _, keys in BENCHMARKS.values() for key, _ in keys.values()))
DATA_KINDS = ("imagenet", "coco", "ade")
# benchmark -> the benchmark of the same checkpoint whose trained model it reads (Tab. 7 probes the fine-tuned model)
PREREQUISITES = {"cls.posprobe_finetuned": "cls.finetune"}
SUITE_KEYS = {"name", "work_dir", "backend", "data", "checkpoints", "checkpoints_from", "benchmarks", "synthetic",
              "chance"}
# backend type -> the keys it takes
BACKEND_KEYS = {
    "local": {"type"},
    "torchrun": {"type", "gpus"},
    "slurm": {"type", "gpus", "nodes", "partition", "timeout_min", "cpus_per_task", "mem_gb", "account", "constraint",
              "cluster"},
    "docker": {"type", "gpus", "image", "docker"},
}
REQUIRED_BACKEND_KEYS = {"slurm": ("timeout_min",), "docker": ("image",)}  # submitit's default time limit is 5 min
BACKEND_DEFAULTS = {"docker": {"docker": "docker"}}  # the docker executable
SUBMITIT_CLUSTERS = ("slurm", "local", "debug")
CHECKPOINT_KEYS = {"label", "path", "format", "epochs", "reference", "reported", "random_init", "overrides",
                   "benchmarks"}
BENCHMARK_KEYS = {"name", "config", "overrides"}


SUITES_DIR = Path(__file__).parents[1] / "suites"


class SuiteError(UserInputError):
    """A suite file is wrong; the message starts with 'file:line:'."""


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint of a suite file: where it is, how to read it, and its row label (backbone.Checkpoint is a
    state dict read from a file)."""
    label: str
    path: str | None  # None: random init
    format: str = "auto"
    epochs: int | None = None
    reference: str | None = None
    reported: tuple[ReportedRow, ...] = ()  # the release's own paper's numbers
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # benchmark name -> key: value
    benchmarks: tuple[str, ...] | None = None  # only these of the suite's benchmarks (None: all)


@dataclass(frozen=True)
class Benchmark:
    name: str
    config: str | None  # posacc takes none
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    work_dir: Path
    backend: dict[str, Any]
    data: dict[str, str]
    checkpoints: tuple[CheckpointEntry, ...]
    benchmarks: tuple[Benchmark, ...]
    synthetic: bool = False
    chance: dict[str, float] = field(default_factory=dict)  # report metric -> chance level, percent


@dataclass(frozen=True)
class Job:
    """One checkpoint through one benchmark: the CLI arguments that run it and where it writes."""

    job_id: str
    checkpoint: CheckpointEntry
    benchmark: str
    args: tuple[str, ...]  # after `droppos-bench`
    work_dir: Path
    after: str | None = None  # the job whose trained model this one reads: it must run first

    @property
    def config(self) -> dict[str, Any]:
        """What identifies the job's result (stored with it): the command and the checkpoint."""
        return {"args": list(self.args), "checkpoint": self.checkpoint.path, "format": self.checkpoint.format,
                "version": file_version(self.checkpoint.path)}


class _Located:
    """Python values of a YAML node tree, with each node's line to name in errors."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, node: yaml.Node, message: str) -> SuiteError:
        return SuiteError(f"{self.path}:{node.start_mark.line + 1}: {message}")

    def mapping(self, node: yaml.Node, allowed: set[str], what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """{key: (key node, value node)} of a mapping whose keys must be in `allowed`."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        items = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key not in allowed:
                raise self.error(key_node, f"unknown key {key!r} in {what}; expected one of {sorted(allowed)}")
            if key in items:
                raise self.error(key_node, f"key {key!r} given twice in {what}")
            items[key] = (key_node, value_node)
        return items

    def value(self, node: yaml.Node) -> Any:
        return yaml.safe_load(yaml.serialize(node))

    def text(self, node: yaml.Node, what: str) -> str:
        value = self.value(node)
        if not isinstance(value, str) or not value:
            raise self.error(node, f"{what} must be a non-empty string")
        return value

    def plain_mapping(self, node: yaml.Node, what: str) -> dict[str, Any]:
        value = self.value(node)
        if not isinstance(value, dict):
            raise self.error(node, f"{what} must be a mapping")
        return value

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.error(node, f"{what} must be a non-empty list")
        return node.value


def resolve_suite(name: str | Path) -> Path:
    """A suite file, or the name of a shipped suite."""
    path = Path(name)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = SUITES_DIR / f"{name}.yaml"
    if not shipped.is_file():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
        raise MissingInputError(f"no suite file {name!r} and no shipped suite of that name; shipped: {known}")
    return shipped


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; every error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"suite file not found: {path}")
    try:
        root = yaml.compose(path.read_text())
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: not valid YAML: {err}") from None
    doc = _Located(path)
    if root is None:
        raise SuiteError(f"{path}: empty suite file")
    top = doc.mapping(root, SUITE_KEYS, "the suite")
    for required in ("name", "benchmarks"):
        if required not in top:
            raise doc.error(root, f"the suite needs '{required}'")
    if "checkpoints" not in top and "checkpoints_from" not in top:
        raise doc.error(root, "the suite needs 'checkpoints' (or 'checkpoints_from': another suite)")
    name = doc.text(top["name"][1], "name")
    base = _base_suite(doc, top["checkpoints_from"][1], path) if "checkpoints_from" in top else None
    data = doc.plain_mapping(top["data"][1], "data") if "data" in top else {}
    for kind_node, _ in (top["data"][1].value if "data" in top else []):
        if kind_node.value not in DATA_KINDS:
            raise doc.error(kind_node, f"unknown dataset {kind_node.value!r}; expected one of {list(DATA_KINDS)}")
    data = {**(base.data if base else {}), **data}
    backend = _backend(doc, top["backend"][1]) if "backend" in top else {"type": "local"}
    own = doc.sequence(top["checkpoints"][1], "checkpoints") if "checkpoints" in top else []
    checkpoints = (base.checkpoints if base else ()) + tuple(_checkpoint(doc, node) for node in own)
    labels = [c.label for c in checkpoints]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise doc.error(top["checkpoints" if "checkpoints" in top else "checkpoints_from"][1],
                        f"checkpoint labels must differ: {duplicates}")
    benchmarks = tuple(_benchmark(doc, node) for node in doc.sequence(top["benchmarks"][1], "benchmarks"))
    for index, (benchmark, node) in enumerate(zip(benchmarks, top["benchmarks"][1].value, strict=True)):
        needed = PREREQUISITES.get(benchmark.name)
        if needed and needed not in [b.name for b in benchmarks[:index]]:
            raise doc.error(node, f"benchmark {benchmark.name!r} reads the model {needed!r} trains: list {needed!r} "
                                  "before it")
        kind = BENCHMARKS[benchmark.name][1]
        if kind not in data:
            raise doc.error(node, f"benchmark {benchmark.name!r} needs data.{kind} (the {kind} root)")
    work_dir = Path("work_dirs", "bench", name)
    if "work_dir" in top:
        work_dir = Path(os.path.expandvars(doc.text(top["work_dir"][1], "work_dir")))
    synthetic = bool(doc.value(top["synthetic"][1])) if "synthetic" in top else False
    chance = _chance(doc, top["chance"][1]) if "chance" in top else {}
    return Suite(path, name, work_dir, backend, {k: os.path.expandvars(str(v)) for k, v in data.items()},
                 checkpoints, benchmarks, synthetic, chance)


def _base_suite(doc: _Located, node: yaml.Node, path: Path) -> Suite:
    """The suite `checkpoints_from` names; its own errors keep its file and line."""
    name = doc.text(node, "checkpoints_from")
    try:
        base = resolve_suite(name)
    except MissingInputError as err:
        raise doc.error(node, str(err)) from None
    if base.resolve() == path.resolve():
        raise doc.error(node, "checkpoints_from names this suite itself")
    return load_suite(base)


def _percents(doc: _Located, items: dict[str, tuple[yaml.Node, yaml.Node]], what: str) -> dict[str, float]:
    """{report metric: percent} of a mapping's items, each value checked to be a number from 0 to 100."""
    levels = {}
    for key, (_, value_node) in items.items():
        value = doc.value(value_node)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise doc.error(value_node, f"{what}.{key} must be a percent from 0 to 100, not {value!r}")
        levels[key] = float(value)
    return levels


def _chance(doc: _Located, node: yaml.Node) -> dict[str, float]:
    """Chance levels by report metric, in percent: beside them a tiny model's numbers read for what they are."""
    return _percents(doc, doc.mapping(node, set(REPORT_METRICS), "chance (report metric: percent)"), "chance")


def _reported(doc: _Located, node: yaml.Node) -> tuple[ReportedRow, ...]:
    """A checkpoint's `reported:` entries: each a `source` and at least one report metric in percent."""
    rows = []
    for entry in doc.sequence(node, "reported"):
        items = doc.mapping(entry, {"source", *REPORT_METRICS}, "a reported entry (source and report metrics)")
        if "source" not in items:
            raise doc.error(entry, "a reported entry needs a 'source' (the paper and table the numbers are from)")
        source = doc.text(items.pop("source")[1], "source")
        if not items:
            raise doc.error(entry, f"reported entry {source!r} gives no metric; expected some of "
                                   f"{list(REPORT_METRICS)}")
        rows.append(ReportedRow(source, _percents(doc, items, "reported")))
    return tuple(rows)


def _backend(doc: _Located, node: yaml.Node) -> dict[str, Any]:
    """The backend's settings, each checked for the backend's type, with its defaults."""
    if not isinstance(node, yaml.MappingNode):
        raise doc.error(node, "backend must be a mapping")
    type_node = next((value for key, value in node.value if key.value == "type"), None)
    kind = "local" if type_node is None else doc.text(type_node, "backend.type")
    if kind not in BACKEND_KEYS:
        raise doc.error(type_node, f"unknown backend {kind!r}; expected one of {list(BACKEND_KEYS)}")
    items = doc.mapping(node, BACKEND_KEYS[kind], f"the {kind} backend")
    for required in REQUIRED_BACKEND_KEYS.get(kind, ()):
        if required not in items:
            raise doc.error(node, f"the {kind} backend needs '{required}'")
    backend: dict[str, Any] = {"type": kind, **BACKEND_DEFAULTS.get(kind, {})}
    for key, (_, value_node) in items.items():
        what = f"backend.{key}"
        if key in ("gpus", "nodes", "timeout_min", "cpus_per_task"):
            backend[key] = _positive(doc, value_node, what, (int,))
        elif key == "mem_gb":
            backend[key] = _positive(doc, value_node, what, (int, float))
        elif key != "type":
            backend[key] = doc.text(value_node, what)
    if backend.get("cluster", "slurm") not in SUBMITIT_CLUSTERS:
        raise doc.error(items["cluster"][1], f"unknown submitit cluster {backend['cluster']!r}; expected one of "
                                             f"{list(SUBMITIT_CLUSTERS)}, or none: SLURM where srun is found")
    return backend


def _positive(doc: _Located, node: yaml.Node, what: str, types: tuple[type, ...]) -> int | float:
    value = doc.value(node)
    if isinstance(value, bool) or not isinstance(value, types) or value <= 0:
        raise doc.error(node, f"{what} must be a positive {'integer' if types == (int,) else 'number'}")
    return value


def _checkpoint(doc: _Located, node: yaml.Node) -> CheckpointEntry:
    items = doc.mapping(node, CHECKPOINT_KEYS, "a checkpoint")
    if "label" not in items:
        raise doc.error(node, "a checkpoint needs a 'label'")
    label = doc.text(items["label"][1], "label")
    random_init = bool(doc.value(items["random_init"][1])) if "random_init" in items else False
    path = None
    if random_init == ("path" in items):
        raise doc.error(node, f"checkpoint {label!r} needs either 'path' or 'random_init: true'")
    if not random_init:
        path = os.path.expandvars(doc.text(items["path"][1], "path"))
        if not Path(path).is_file():
            raise doc.error(items["path"][1], f"checkpoint file not found: {path}")
    reference = None
    if "reference" in items:
        reference = doc.text(items["reference"][1], "reference")
        try:
            parse_reference(reference)
        except ValueError as err:
            raise doc.error(items["reference"][1], str(err)) from None
    reported = _reported(doc, items["reported"][1]) if "reported" in items else ()
    epochs = doc.value(items["epochs"][1]) if "epochs" in items else None
    if epochs is not None and (not isinstance(epochs, int) or epochs < 0):
        raise doc.error(items["epochs"][1], "epochs must be a non-negative integer")
    overrides = doc.plain_mapping(items["overrides"][1], "overrides") if "overrides" in items else {}
    for key_node, value_node in (items["overrides"][1].value if "overrides" in items else []):
        if key_node.value not in BENCHMARKS:
            raise doc.error(key_node, f"overrides for unknown benchmark {key_node.value!r}; expected one of "
                                      f"{sorted(BENCHMARKS)}")
        doc.plain_mapping(value_node, f"overrides.{key_node.value}")
    overrides = {name: _expand_vars(values) for name, values in overrides.items()}
    only = None
    if "benchmarks" in items:
        only = tuple(doc.value(items["benchmarks"][1]) or ())
        unknown = [name for name in only if name not in BENCHMARKS]
        if unknown:
            raise doc.error(items["benchmarks"][1], f"unknown benchmarks {unknown}; expected from {sorted(BENCHMARKS)}")
    fmt = doc.text(items["format"][1], "format") if "format" in items else "auto"
    return CheckpointEntry(label, path, fmt, epochs, reference, reported, overrides, only)


def _benchmark(doc: _Located, node: yaml.Node) -> Benchmark:
    items = doc.mapping(node, BENCHMARK_KEYS, "a benchmark")
    if "name" not in items:
        raise doc.error(node, "a benchmark needs a 'name'")
    name = doc.text(items["name"][1], "name")
    if name not in BENCHMARKS:
        raise doc.error(items["name"][1], f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    if name != "posacc" and "config" not in items:
        raise doc.error(node, f"benchmark {name!r} needs a 'config' (a shipped config name or a file)")
    config = doc.text(items["config"][1], "config") if "config" in items else None
    overrides = doc.plain_mapping(items["overrides"][1], "overrides") if "overrides" in items else {}
    return Benchmark(name, config, _expand_vars(overrides))


def _expand_vars(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides with environment variables expanded in their text values, as in the suite's paths."""
    return {key: os.path.expandvars(value) if isinstance(value, str) else value for key, value in overrides.items()}


def slug(text: str) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "x"


def expand_jobs(suite: Suite) -> list[Job]:
    """Every checkpoint x benchmark, in suite order, with its CLI arguments and work dir; the job id ends in a
    digest of the arguments and the versions of the checkpoint file and of any file an override names (a released
    head), so a changed recipe or a re-trained checkpoint is a new job and never takes an old result's place."""
    jobs = []
    for checkpoint in suite.checkpoints:
        own: dict[str, Job] = {}  # this checkpoint's jobs by benchmark, for the benchmarks that read their models
        for benchmark in suite.benchmarks:
            if checkpoint.benchmarks is not None and benchmark.name not in checkpoint.benchmarks:
                continue
            if benchmark.name == "posacc" and checkpoint.path is None:
                continue  # the position decoder comes from pre-training
            prerequisite = own.get(PREREQUISITES.get(benchmark.name, ""))
            if benchmark.name in PREREQUISITES and prerequisite is None:
                continue  # this checkpoint does not run the benchmark whose model it would read
            model = str(prerequisite.work_dir) if prerequisite else checkpoint.path
            words, kind, _ = BENCHMARKS[benchmark.name]
            args = _arguments(words, benchmark, checkpoint, model, suite.data[kind])
            identity = [args, checkpoint.path, checkpoint.format, file_version(checkpoint.path)]
            named = job_overrides(benchmark, checkpoint).values()
            if files := [value for value in named if isinstance(value, str) and Path(value).is_file()]:
                identity.append([file_version(path) for path in files])  # only then: other ids stay as they were
            digest = hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:8]
            job_id = f"{slug(checkpoint.label)}.{benchmark.name}.{digest}"
            work_dir = suite.work_dir / job_id
            if benchmark.name == "posacc":
                args += ("--out", str(work_dir / "metrics.json"))
            else:
                args += (f"work_dir={work_dir}",)
            own[benchmark.name] = Job(job_id, checkpoint, benchmark.name, args, work_dir,
                                      prerequisite.job_id if prerequisite else None)
            jobs.append(own[benchmark.name])
    return jobs


def file_version(path: str | None) -> list[int] | None:
    """Size and modification time of a file (through links): a file written again is another version."""
    if path is None:
        return None
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns]


def job_overrides(benchmark: Benchmark, checkpoint: CheckpointEntry) -> dict[str, Any]:
    """The overrides of a checkpoint's job of `benchmark`: the benchmark's, then the checkpoint's own (which win)."""
    return {**benchmark.overrides, **checkpoint.overrides.get(benchmark.name, {})}


def _arguments(words: tuple[str, ...], benchmark: Benchmark, checkpoint: CheckpointEntry, model: str | None,
               root: str) -> tuple[str, ...]:
    """The CLI words of a job: `model` is the checkpoint (a file, or a training run's work dir), None for random
    init."""
    if benchmark.name == "posacc":
        return (*words, model, "--data", root)
    overrides = {"data.root": root, **job_overrides(benchmark, checkpoint)}
    if model is not None:
        overrides["ckpt"] = model
    if model is not None and model == checkpoint.path and checkpoint.format != "auto":
        overrides["ckpt_format"] = checkpoint.format  # a prerequisite's run is read as what it is (auto)
    return (*words, benchmark.config, *(f"{key}={_cli_value(value)}" for key, value in overrides.items()))


def _cli_value(value: Any) -> str:
    """A value as mmengine's DictAction parses it back (lists and tuples as tuples, strings bare)."""
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_cli_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)
