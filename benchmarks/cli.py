"""`droppos-bench`: the one command-line entry point; each subcommand hands its arguments to a task."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from mmengine.config import DictAction

from backbone import FORMATS, LAYOUTS, export_checkpoint, load_model
from engine.errors import UserInputError
from engine.safe_io import NO_SPACE

from .demo import DEMO_DEFAULTS, run_demo

log = logging.getLogger("droppos_bench")


def run_synth(args: argparse.Namespace) -> None:
    from .synthetic import synthesize

    summary = synthesize(args.out, num_images=args.images, size=args.size, seed=args.seed,
                         overwrite=args.overwrite)
    log.info("wrote %d synthetic scenes (%s) to %s", args.images, summary["splits"], args.out)


def convert_whole_detector(args: argparse.Namespace) -> bool:
    """`convert SRC OUT --to detectron2` of a whole detector (a det train checkpoint or a detectron2 file) writes the
    whole detector in detectron2's layout; False for an encoder, or when --prefix selects a part."""
    if args.to != "detectron2" or args.prefix is not None:
        return False
    from det.checkpoint import read_detector, save_detectron2  # the detection stack loads only when needed

    state = read_detector(args.src, args.format, args.allow_pickle)
    if state is None:
        return False
    if args.img_size is not None:
        raise UserInputError(f"{args.src}: --img-size resamples an encoder; a whole detector is written as it "
                             "is (--prefix backbone.net. converts its ViT alone)")
    path = save_detectron2(state, args.out)
    print(f"wrote {path} (detectron2 layout, the whole detector: {len(state)} tensors)")
    return True


def run_convert(args: argparse.Namespace) -> None:
    if convert_whole_detector(args):
        return
    overrides = {k: v for k, v in (("img_size", args.img_size), ("num_heads", args.num_heads)) if v is not None}
    model, report = load_model(args.src, fmt=args.format, prefix=args.prefix, allow_pickle=args.allow_pickle,
                               keep_head=args.keep_head, **overrides)
    print(report)
    meta = {"converted_from": str(args.src), "source_format": report.format}
    path = export_checkpoint(model, args.out, args.to, meta=meta if args.to == "ours" else None)
    print(f"wrote {path} ({args.to} layout)")


def with_gpus(suite, gpus: int):
    """`bench run --gpus N`: each job on N GPUs, whatever the suite says (a local suite runs under torchrun)."""
    backend = {"type": "torchrun"} if suite.backend["type"] == "local" else dict(suite.backend)
    return dataclasses.replace(suite, backend={**backend, "gpus": gpus})


def run_bench_command(args: argparse.Namespace) -> None:
    from .harness.run import JobsFailedError, report_suite, run_suite, store_path
    from .harness.store import ResultsStore
    from .harness.suite import load_suite, resolve_suite

    suite = load_suite(resolve_suite(args.suite))
    if getattr(args, "gpus", None):
        suite = with_gpus(suite, args.gpus)
    if args.bench_command == "report":
        print(f"report: {report_suite(suite, args.out or suite.work_dir / 'report')}")
        return
    states = run_suite(suite) if args.bench_command == "run" else None
    with ResultsStore(store_path(suite)) as store:
        if args.bench_command == "status":
            store.reset_interrupted()
        print(store.status_table(suite.name))
    failed = [job for job, state in (states or {}).items() if state == "failed"]
    if failed:
        raise JobsFailedError(f"{len(failed)} of {len(states)} jobs failed: {', '.join(failed)} (log tails above)")


def run_posacc_command(args: argparse.Namespace) -> None:
    from pretrain.posacc_command import run_posacc

    run_posacc(args.checkpoint, args.data, split=args.split, images=args.images, batch_size=args.batch_size,
               seed=args.seed, workers=args.workers, out=args.out, figure=args.figure,
               figure_images=args.figure_images, allow_pickle=args.allow_pickle, device=args.device)


def config_task(module: str, function: str, prints: str | None = "metrics") -> Callable[[argparse.Namespace], None]:
    """The handler of a config command: it imports `module` only when it runs (the task stacks load slowly), calls
    its `function` with the config and overrides, and prints the file that returns under the label `prints` (None:
    an evaluation, which reports itself)."""
    def handler(args: argparse.Namespace) -> None:
        result = getattr(importlib.import_module(module), function)(args.config, args.overrides)
        if prints:
            print(f"{prints}: {result}")

    return handler


class OverrideAction(DictAction):
    """mmengine's `key=value` parsing into a dict (numbers, true / false, None, lists and tuples), refusing an
    argument without '=' as a usage error (exit 2) rather than a traceback."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Sequence[str] | None,
                 option_string: str | None = None) -> None:
        for value in values or ():
            if "=" not in value:
                raise argparse.ArgumentError(self, f"{value!r} is not key=value (e.g. schedule.epochs=100)")
        super().__call__(parser, namespace, values, option_string)


def add_config_command(sub: argparse._SubParsersAction, name: str, func, help_text: str, config_help: str,
                       overrides_help: str) -> None:
    """A subcommand that takes a config and `key=value` overrides (every training / evaluation job)."""
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("config", help=config_help)
    parser.add_argument("overrides", nargs="*", action=OverrideAction, metavar="key=value",
                        help=f"change config values, {overrides_help}")
    parser.set_defaults(func=func)


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="pre-train a tiny DropPos on built-in colour ramps and show what it learnt")
    demo.add_argument("--out", type=Path, default=Path(DEMO_DEFAULTS["out"]), help="output folder")
    demo.add_argument("--seed", type=int, default=DEMO_DEFAULTS["seed"])
    demo.add_argument("--quick", action="store_true", help="a step or two of each stage: checks the pipeline (CI)")
    demo.set_defaults(func=lambda a: run_demo(a.out, a.seed, a.quick))


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a deterministic synthetic dataset in ImageNet, COCO and ADE20K "
                                          "layouts")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--images", type=int, required=True, help="number of images (train + val)")
    synth.add_argument("--size", type=int, required=True, help="image side in pixels (a multiple of 16)")
    synth.add_argument("--seed", type=int, required=True, help="same seed, same bytes")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    synth.set_defaults(func=run_synth)


def add_convert_command(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser("convert", help="read a checkpoint of any supported format, report, and rewrite it")
    convert.add_argument("src", type=Path, help=".pth / .pth.tar / .safetensors / .pkl (detectron2) checkpoint")
    convert.add_argument("out", type=Path, help="output file (.safetensors for --to ours)")
    convert.add_argument("--from", dest="format", default="auto", choices=("auto",) + FORMATS,
                         help="source format (default: detect)")
    convert.add_argument("--to", default="ours", choices=LAYOUTS,
                         help="output key layout (detectron2 writes a whole detector whole, other files' encoder)")
    convert.add_argument("--prefix", help="keep only keys under this prefix, stripped (e.g. 'encoder.')")
    convert.add_argument("--img-size", type=int, help="resample the pos embed to this input size")
    convert.add_argument("--num-heads", type=int, help="attention heads, for widths that match no named size")
    convert.add_argument("--keep-head", action="store_true", help="keep the classification head (fine-tuned)")
    convert.add_argument("--allow-pickle", action="store_true",
                         help="allow arbitrary pickled objects: runs code from the file, only for trusted files")
    convert.set_defaults(func=run_convert)


def add_pretrain_commands(sub: argparse._SubParsersAction) -> None:
    """`pretrain` and `posacc`, the position accuracy of what it trained."""
    add_config_command(sub, "pretrain", config_task("pretrain.train", "run_pretrain", "encoder"),
                       "pre-train DropPos, MAE, MAE+ or AdPE on an ImageNet-layout folder (mmengine)",
                       "config file, or the name of a shipped one (pretrain/configs/), e.g. droppos_vit_base_200ep "
                       "or ablations/tab1_gamma_0.50", "e.g. data.root=/data/imagenet schedule.epochs=100")
    posacc = sub.add_parser("posacc", help="position accuracy grid of a DropPos checkpoint (paper Tab. S3, Fig. 3)")
    posacc.add_argument("checkpoint", type=Path, help="our pre-training checkpoint (epoch_N.pth) or the authors' "
                                                      "release; it must hold the position decoder")
    posacc.add_argument("--data", type=Path, required=True, help="ImageNet-layout root (or a synthetic dataset)")
    posacc.add_argument("--split", default="val")
    posacc.add_argument("--images", type=int, help="evaluate this many images, evenly spread (default: all)")
    posacc.add_argument("--batch-size", type=int, default=64)
    posacc.add_argument("--seed", type=int, default=0, help="masks depend only on the seed and the case")
    posacc.add_argument("--workers", type=int, default=4, help="data-loader processes")
    posacc.add_argument("--out", type=Path, help="also write the grid as json")
    posacc.add_argument("--figure", type=Path, help="draw paper Fig. 3 (PNG) for the first images")
    posacc.add_argument("--figure-images", type=int, default=4)
    posacc.add_argument("--device", help="default: cuda if available")
    posacc.add_argument("--allow-pickle", action="store_true",
                        help="allow arbitrary pickled objects: runs code from the file, only for trusted files")
    posacc.set_defaults(func=run_posacc_command)


def add_cls_commands(sub: argparse._SubParsersAction) -> None:
    cls = sub.add_parser("cls", help="classification benchmarks").add_subparsers(dest="cls_command", required=True)
    add_config_command(cls, "finetune", config_task("cls.finetune", "run_finetune"),
                       "fine-tune a pre-trained ViT end to end on an ImageNet-layout folder",
                       "config file, or the name of a shipped one (cls/configs/), e.g. finetune_vit_base_100ep",
                       "e.g. ckpt=work_dirs/droppos_vit_base_200ep/encoder.safetensors data.root=...")
    add_config_command(cls, "eval", config_task("cls.evaluate", "run_eval", None),
                       "top-1 / top-5 of a fine-tuned checkpoint on the val split",
                       "the fine-tuning config (model, data, batch size)",
                       "ckpt=PATH (required), data.root=..., work_dir=... (metrics.json goes there)")
    add_config_command(cls, "linprobe", config_task("cls.linprobe", "run_linprobe"),
                       "linear probe of a frozen backbone (MAE protocol: BN + linear, LARS)",
                       "config file or shipped name, e.g. linprobe_vit_base", "ckpt=PATH, data.root=...")
    add_config_command(cls, "posprobe", config_task("cls.position_probe", "run_posprobe"),
                       "position-sensitivity probe of a frozen backbone (paper Tab. 7)",
                       "config file or shipped name, e.g. posprobe_vit_base", "ckpt=PATH (required), data.root=...")
    add_config_command(cls, "knn", config_task("cls.frozen", "run_knn"),
                       "weighted k-NN on cached frozen features (DINO's protocol), minutes instead of days",
                       "config file or shipped name, e.g. knn_vit_base", "ckpt=PATH, data.root=...")
    add_config_command(cls, "linear", config_task("cls.frozen", "run_linear"),
                       "a grid of linear heads on cached frozen features (DINOv2's protocol)",
                       "config file or shipped name, e.g. linear_vit_base", "ckpt=PATH, data.root=...")


def add_det_commands(sub: argparse._SubParsersAction) -> None:
    det = sub.add_parser("det", help="COCO detection and instance segmentation (ViTDet Mask R-CNN)")
    det_commands = det.add_subparsers(dest="det_command", required=True)
    add_config_command(det_commands, "train", config_task("det.train", "run_det_train"),
                       "fine-tune a pre-trained ViT as a ViTDet Mask R-CNN on a COCO-layout dataset",
                       "config file, or the name of a shipped one (det/configs/), e.g. mask_rcnn_vit_base_1x",
                       "e.g. ckpt=work_dirs/droppos_vit_base_200ep/encoder.safetensors data.root=/data/coco")
    add_config_command(det_commands, "eval", config_task("det.evaluate", "run_det_eval", None),
                       "COCO box / mask AP of a trained detector on the val split",
                       "the training config (model, data, batch size)",
                       "ckpt=PATH (required, written by det train), data.root=..., work_dir=...")


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="run suites of checkpoints x benchmarks and report them as the paper's tables")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    suite_help = "suite file, or the name of a shipped one (benchmarks/suites/), e.g. paper-table6"
    for name, text in (("run", "run every job of the suite that is not done yet (results kept in its store)"),
                       ("status", "the suite's jobs: pending / running / done / failed, with failures' log tails"),
                       ("report", "Markdown / CSV / LaTeX tables beside the paper's numbers, plots, one HTML page")):
        command = bench_commands.add_parser(name, help=text)
        command.add_argument("suite", help=suite_help)
        if name == "report":
            command.add_argument("--out", type=Path, help="report folder (default: <suite work dir>/report)")
        if name == "run":
            command.add_argument("--gpus", type=int, help="GPUs per job (per node), in place of the suite's backend "
                                 "setting; a local suite then runs each job under torchrun")
        command.set_defaults(func=run_bench_command)


def add_seg_commands(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser("seg", help="ADE20K semantic segmentation (UperNet, mmsegmentation)")
    seg_commands = seg.add_subparsers(dest="seg_command", required=True)
    add_config_command(seg_commands, "train", config_task("seg.train", "run_seg_train"),
                       "fine-tune a pre-trained ViT as a UperNet on an ADE20K-layout dataset",
                       "config file, or the name of a shipped one (seg/configs/), e.g. upernet_vit_base_80k",
                       "e.g. ckpt=work_dirs/droppos_vit_base_200ep/encoder.safetensors "
                       "data.root=/data/ADEChallengeData2016")
    add_config_command(seg_commands, "eval", config_task("seg.evaluate", "run_seg_eval", None),
                       "sliding-window mIoU / mAcc / aAcc and per-class IoU of a trained segmentor on the val split",
                       "the training config (model, data)",
                       "ckpt=PATH (required, written by seg train), data.root=..., work_dir=...")
    add_config_command(seg_commands, "linear", config_task("seg.linear", "run_seg_linear"),
                       "BatchNorm + 1x1 conv on a frozen ViT's patch features (DINOv2's linear segmentation)",
                       "config file, or the name of a shipped one, e.g. linear_vit_base_ade",
                       "e.g. ckpt=PATH data.root=/data/ADEChallengeData2016")


class OneLineErrors(argparse.ArgumentParser):
    """A usage error in one line and exit 2, like every other user error (`--help` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="droppos-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_commands in (add_demo_command, add_data_commands, add_convert_command, add_pretrain_commands,
                         add_cls_commands, add_det_commands, add_bench_commands, add_seg_commands):
        add_commands(sub)
    return parser


def background_write_errors(args: threading.ExceptHookArgs) -> None:
    """A background writer (TensorBoard's event thread) stopped by a full or read-only disk: one warning line; the
    training thread then stops with the error on its own next write."""
    error = args.exc_value
    if isinstance(error, OSError) and error.errno in (*NO_SPACE, errno.EROFS):
        print(f"droppos-bench: warning: {args.thread.name if args.thread else 'a thread'} stopped writing "
              f"{error.filename or 'its file'}: {error.strerror}", file=sys.stderr)
        return
    threading.__excepthook__(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run one subcommand; a user's mistake prints one line naming the file, key or value and
    exits 2, anything else (a bug) propagates with its traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.raiseExceptions = False  # a log file on a full disk must not print a traceback per record
    threading.excepthook = background_write_errors
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserInputError as err:
        print(f"droppos-bench: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
