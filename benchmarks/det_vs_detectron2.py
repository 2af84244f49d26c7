"""Our ViTDet Mask R-CNN against detectron2's on the same weights: detections, losses and step times.

    python benchmarks/det_vs_detectron2.py                                   # ViT-B, 1024 px, 1 thread, CPU
    python benchmarks/det_vs_detectron2.py --depth 4 --img-size 512 --rounds 5

Needs detectron2 importable beside this project (it has no release on the package index; build it from its source,
e.g. `pip install --no-build-isolation -e <detectron2 checkout>` in an environment with this project's torch). The
project itself never imports detectron2: this script is the by-hand check behind the README's claims.

Our detector's weights (random, with the heads' outputs spread so that scores and proposals vary) are written in
detectron2's layout (det.detectron2_layout) and loaded into detectron2's ViTDet (its model-zoo config
common/models/mask_rcnn_vitdet.py, resized to --size / --depth / --img-size). Both get the same pixels: synthetic
COCO-layout scenes through our test-time resize and large scale jitter. Printed: how many of our proposals and final
detections detectron2 also has (same box within --tolerance px, same class) and the largest differences, on each
model's own backbone and with both heads on the same features; the five training losses of both, with the same
random draws and with every anchor and proposal sampled (no draws); and the time of a training step (forward and
backward) and of inference in paired rounds, with the median ratio ours / detectron2 (--rounds 0: no timing).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.synthetic import synthesize
from det.data import CocoDetection, coco_paths, eval_transform, lsj_transform
from det.detectron2_layout import to_detectron2
from det.model import ViTDetMaskRCNN, build_mask_rcnn

LOSS_NAMES = {"loss_cls": "loss_classifier"}  # detectron2's name: ours, where they differ


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", choices=("tiny", "small", "base", "large"))
    parser.add_argument("--depth", type=int, help="encoder depth (default: the size's)")
    parser.add_argument("--img-size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=4, help="synthetic scenes compared and timed")
    parser.add_argument("--rounds", type=int, default=6, help="paired timing rounds (one step of each per round)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.01, help="px: boxes closer than this match")
    return parser.parse_args()


def build_pair(args: argparse.Namespace, classes: int) -> tuple[ViTDetMaskRCNN, torch.nn.Module]:
    """Our detector and detectron2's, both in eval mode, with the same weights."""
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    torch.manual_seed(0)
    extra = {} if args.depth is None else {"depth": args.depth}
    ours = build_mask_rcnn(classes, args.size, img_size=args.img_size, drop_path_rate=0.0, **extra).eval()
    with torch.no_grad():  # spread the heads' outputs: varied objectness, boxes, class scores and masks
        for layer, std in ((ours.rpn.head.cls_logits, 0.5), (ours.rpn.head.bbox_pred, 0.05),
                           (ours.roi_heads.box_predictor.cls_score, 0.3),
                           (ours.roi_heads.box_predictor.bbox_pred, 0.02),
                           (ours.roi_heads.mask_predictor.mask_fcn_logits, 0.3)):
            layer.weight.normal_(std=std)
        ours.rpn.head.cls_logits.bias.fill_(2.0)
        for name, parameter in ours.named_parameters():
            if "rel_pos" in name:
                parameter.normal_(std=0.02)
    net = ours.backbone.net
    cfg = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    cfg.backbone.net.update(img_size=args.img_size, embed_dim=net.embed_dim, depth=net.num_layers,
                            num_heads=net.config["num_heads"], drop_path_rate=0.0,
                            window_block_indexes=[i for i in range(net.num_layers)
                                                  if i not in net.config["global_blocks"]])
    cfg.backbone.square_pad = args.img_size
    cfg.roi_heads.num_classes = classes
    theirs = instantiate(cfg).eval()
    theirs.load_state_dict(to_detectron2(ours.state_dict()), strict=True)
    return ours, theirs


def detectron2_sample(sample: dict, train: bool) -> dict:
    """detectron2's input for one of our samples: the valid (unpadded) pixels and, for training, the instances."""
    from detectron2.structures import BitMasks, Boxes, Instances

    height, width = sample["meta"]["image_size"]
    out = {"image": sample["image"][:, :height, :width].contiguous()}
    if not train:
        return dict(out, height=sample["meta"]["orig_size"][0], width=sample["meta"]["orig_size"][1])
    target = sample["target"]
    instances = Instances((height, width), gt_boxes=Boxes(target["boxes"].float()), gt_classes=target["labels"],
                          gt_masks=BitMasks(target["masks"][:, :height, :width].bool()))
    return dict(out, instances=instances)


def matched(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float, ours_labels: torch.Tensor | None = None,
            their_labels: torch.Tensor | None = None) -> tuple[int, float]:
    """(how many of our boxes detectron2 has within `tolerance` px, with the same label, largest distance to the
    nearest of its boxes); compared as sets, as near-equal scores may come in either order."""
    if not len(ours) or not len(theirs):
        return 0, float("nan")
    distance = (ours[:, None] - theirs[None]).abs().amax(dim=2)
    if ours_labels is not None:
        distance = distance + (ours_labels[:, None] != their_labels[None]) * 1e9
    nearest = distance.min(dim=1).values
    return int((nearest <= tolerance).sum()), float(nearest.max())


def compare_inference(ours: ViTDetMaskRCNN, theirs: torch.nn.Module, samples: list[dict], tolerance: float) -> None:
    """Per sample: the gap between the backbones' features, then proposals and final detections of each model on its
    own backbone, then of both models' heads on the same features (ours) with every detection kept (no cut at
    100). The last separates what the heads do from the backbones' float32 rounding, by which near-tied scores of
    overlapping boxes may win NMS the other way."""
    from torchvision.models.detection.image_list import ImageList

    recipe = ours.roi_heads.detections_per_img
    for sample in samples:
        meta = sample["meta"]
        size = [tuple(meta["image_size"])]
        with torch.inference_mode():
            pixels = ours.normalise(sample["image"][None], size)
            features = ours.backbone(pixels)
            images = theirs.preprocess_image([detectron2_sample(sample, False)])
            their_features = theirs.backbone(images.tensor)
            gap = max(float((features[k] - their_features[k]).abs().max()) for k in features)
            proposals = ours.rpn(ImageList(pixels, size), features)[0]
            their_proposals = theirs.proposal_generator(images, their_features)[0]
            detection = ours(sample["image"][None], [{}], [meta], mode="predict")[0]
            their_detection = theirs([detectron2_sample(sample, False)])[0]["instances"]
            ours.roi_heads.detections_per_img = theirs.roi_heads.box_predictor.test_topk_per_image = 10 ** 6
            shared = ours.roi_heads(features, proposals, size)[0][0]
            their_shared_proposals = theirs.proposal_generator(images, features)[0]
            their_shared = theirs.roi_heads(images, features, their_shared_proposals)[0][0]
            ours.roi_heads.detections_per_img = theirs.roi_heads.box_predictor.test_topk_per_image = recipe
        same_proposals = torch.equal(proposals[0], their_shared_proposals[0].proposal_boxes.tensor)
        print(f"  image {meta['image_id']} ({meta['orig_size'][0]}x{meta['orig_size'][1]}), features differ by "
              f"{gap:.2g}")
        print("    own backbones: "
              + compared("proposals", proposals[0], their_proposals[0].proposal_boxes.tensor, tolerance) + "; "
              + compared("detections", detection["boxes"], their_detection.pred_boxes.tensor, tolerance,
                         detection["labels"], their_detection.pred_classes))
        print(f"    same features: proposals {'identical' if same_proposals else 'differ'}; "
              + compared("every detection", shared["boxes"], their_shared.pred_boxes.tensor, tolerance,
                         shared["labels"], their_shared.pred_classes + 1))


def compared(what: str, ours: torch.Tensor, theirs: torch.Tensor, tolerance: float, *labels: torch.Tensor) -> str:
    """'<what> N/M of ours in detectron2's K (largest gap G px)', from `matched`."""
    same, gap = matched(ours, theirs, tolerance, *labels)
    return f"{what} {same}/{len(ours)} of ours in detectron2's {len(theirs)} (largest gap {gap:.2g} px)"


def losses(ours: ViTDetMaskRCNN, theirs: torch.nn.Module, sample: dict) -> tuple[dict, dict]:
    """The five training losses of both on one training sample, each model's sampling from the same seed."""
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    mine = ours(sample["image"][None], [sample["target"]], [sample["meta"]])
    torch.manual_seed(0)
    with EventStorage():
        their = theirs([detectron2_sample(sample, True)])
    return mine, their


def set_sampling(ours: ViTDetMaskRCNN, theirs: torch.nn.Module, rpn: int, roi: int) -> None:
    """Both models' sampler batch sizes per image: anchors in the RPN, proposals in the RoI heads."""
    ours.rpn.fg_bg_sampler.batch_size_per_image = theirs.proposal_generator.batch_size_per_image = rpn
    ours.roi_heads.fg_bg_sampler.batch_size_per_image = theirs.roi_heads.batch_size_per_image = roi


def print_losses(title: str, mine: dict, their: dict) -> None:
    print(f"  {title}: " + ", ".join(
        f"{name} {mine[LOSS_NAMES.get(name, name)].item():.6f} / {value.item():.6f}" for name, value in their.items()))


def paired_times(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each step in each round, the steps alternating within a round (one warm-up round first)."""
    times = {name: [] for name in steps}
    for round_index in range(rounds + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_index:
                times[name].append(time.perf_counter() - start)
    return times


def train_step(model: torch.nn.Module, run: Callable[[], dict]) -> None:
    torch.manual_seed(0)
    sum(value for name, value in run().items() if name != "loss").backward()
    model.zero_grad(set_to_none=True)


def report_times(title: str, times: dict[str, list[float]]) -> None:
    ratios = [a / b for a, b in zip(times["ours"], times["detectron2"], strict=True)]
    print(f"{title}: ours {statistics.median(times['ours']):.2f} s, detectron2 "
          f"{statistics.median(times['detectron2']):.2f} s (medians); ours / detectron2 per round "
          f"{', '.join(f'{r:.3f}' for r in ratios)}: median {statistics.median(ratios):.3f}")


def main() -> None:
    from detectron2.utils.events import EventStorage

    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        synthesize(scratch, num_images=2 * args.images, size=512, seed=0, val_fraction=0.5, progress=False)
        val = CocoDetection(*coco_paths(Path(scratch), "val"), eval_transform(args.img_size), train=False)
        train = CocoDetection(*coco_paths(Path(scratch), "train"), lsj_transform(args.img_size), train=True)
        ours, theirs = build_pair(args, len(val.category_ids))
        eval_samples = [val[i] for i in range(min(args.images, len(val)))]
        train_samples = [train[(i, i)] for i in range(min(args.images, len(train)))]
    net = ours.backbone.net
    print(f"ViTDet Mask R-CNN, ViT-{args.size} depth {net.num_layers}, {args.img_size} px, same weights; CPU x"
          f"{torch.get_num_threads()} threads")
    compare_inference(ours, theirs, eval_samples, args.tolerance)
    ours.train()
    theirs.train()
    print_losses("losses, same random draws (ours / detectron2)", *losses(ours, theirs, train_samples[0]))
    recipe = (ours.rpn.fg_bg_sampler.batch_size_per_image, ours.roi_heads.fg_bg_sampler.batch_size_per_image)
    set_sampling(ours, theirs, 10 ** 6, 10 ** 6)  # every anchor and proposal: no random draws, order-free sums
    print_losses("losses, every anchor and proposal sampled", *losses(ours, theirs, train_samples[0]))
    set_sampling(ours, theirs, *recipe)
    if not args.rounds:
        return
    sample = train_samples[0]
    with EventStorage():
        train_times = paired_times({
            "ours": lambda: train_step(ours, lambda: ours(sample["image"][None], [sample["target"]],
                                                          [sample["meta"]])),
            "detectron2": lambda: train_step(theirs, lambda: theirs([detectron2_sample(sample, True)]))},
            args.rounds)
    report_times("training step (forward + backward, 1 image)", train_times)
    ours.eval()
    theirs.eval()
    sample = eval_samples[0]
    with torch.inference_mode():
        infer_times = paired_times({
            "ours": lambda: ours(sample["image"][None], [{}], [sample["meta"]], mode="predict"),
            "detectron2": lambda: theirs([detectron2_sample(sample, False)])}, args.rounds)
    report_times("inference (1 image, masks pasted)", infer_times)


if __name__ == "__main__":
    main()
