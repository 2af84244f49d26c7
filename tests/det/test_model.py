"""ViTDet Mask R-CNN on torchvision: the L1 and mask losses against their formulas, the ViT-B build with ViTDet's
settings and optimizer groups, and the output format."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from det.model import ViTDetRPN, box_losses, build_mask_rcnn, mask_loss, mask_targets
from det.train import vitdet_adamw

TINY = dict(img_size=64, depth=2, window_size=2, global_blocks=(1,), out_channels=32, head_channels=32,
            fc_channels=64, anchor_sizes=(8, 16, 32, 64, 128), roi_batch_size=32)


def test_box_losses_are_cross_entropy_and_l1_on_each_foreground_proposals_own_class():
    generator = torch.Generator().manual_seed(0)
    labels = [torch.tensor([0, 2, 1]), torch.tensor([3, 0])]
    logits = torch.randn(5, 4, generator=generator)
    deltas = torch.randn(5, 16, generator=generator)
    targets = [torch.randn(3, 4, generator=generator), torch.randn(2, 4, generator=generator)]
    losses = box_losses(logits, deltas, labels, targets)
    flat_labels, flat_targets = torch.cat(labels), torch.cat(targets)
    expected_l1 = sum((deltas[i, 4 * c:4 * c + 4] - flat_targets[i]).abs().sum()
                      for i, c in enumerate(flat_labels.tolist()) if c > 0) / 5
    torch.testing.assert_close(losses["loss_box_reg"], expected_l1)
    torch.testing.assert_close(losses["loss_classifier"], F.cross_entropy(logits, flat_labels))


def test_rpn_losses_are_l1_and_cross_entropy_over_sampled_anchors_normalised_as_detectron2():
    rpn = ViTDetRPN.__new__(ViTDetRPN)
    rpn.fg_bg_sampler = BalancedPositiveNegativeSampler(4, 0.5)
    labels = [torch.tensor([1.0, 0.0, -1.0, 0.0, 1.0, 0.0]), torch.tensor([0.0, -1.0, 1.0])]  # -1: ignored
    generator = torch.Generator().manual_seed(0)
    objectness = torch.randn(9, 1, generator=generator)
    deltas = torch.randn(9, 4, generator=generator)
    targets = [torch.randn(6, 4, generator=generator), torch.randn(3, 4, generator=generator)]
    torch.manual_seed(1)  # the sampler draws 4 anchors per image (at most 2 positive)
    cls_loss, box_loss = rpn.compute_loss(objectness, deltas, labels, targets)
    torch.manual_seed(1)
    positive, negative = rpn.fg_bg_sampler(labels)
    positive, negative = torch.cat(positive).bool(), torch.cat(negative).bool()
    flat_labels, flat_targets = torch.cat(labels), torch.cat(targets)
    sampled = positive | negative
    expected_cls = F.binary_cross_entropy_with_logits(objectness[sampled, 0], flat_labels[sampled],
                                                      reduction="sum") / 8
    torch.testing.assert_close(cls_loss, expected_cls)
    torch.testing.assert_close(box_loss, (deltas[positive] - flat_targets[positive]).abs().sum() / 8)


@pytest.fixture(scope="module")
def vit_base_detector():
    with torch.device("meta"):
        return build_mask_rcnn(80, "base")


def test_vit_base_detector_has_vitdet_settings(vit_base_detector):
    """Each value as in detectron2's ViTDet configs (mask_rcnn_vitdet.py on mask_rcnn_fpn.py)."""
    model = vit_base_detector
    # ViTDet's ViT-B Mask R-CNN has 111M: it keeps an unused [CLS] slot in its 14 x 14 pos embed (+768) and no
    # background class in its box deltas and mask logits (-4 x 1025 - 257)
    assert sum(p.numel() for p in model.parameters()) == 110_899_381
    assert tuple(model.backbone.net.pos_embed.shape) == (1, 14 * 14, 768) and model.backbone.net.pos_embed.requires_grad
    rpn, heads = model.rpn, model.roi_heads
    assert rpn.anchor_generator.sizes == (32, 64, 128, 256, 512)
    assert rpn.anchor_generator.aspect_ratios == (0.5, 1.0, 2.0) and rpn.anchor_generator.strides == (4, 8, 16, 32, 64)
    assert len(rpn.head.conv) == 2 and rpn.nms_thresh == 0.7 and rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert rpn._pre_nms_top_n == dict(training=2000, testing=1000)
    assert rpn._post_nms_top_n == dict(training=1000, testing=1000)
    assert (rpn.proposal_matcher.low_threshold, rpn.proposal_matcher.high_threshold) == (0.3, 0.7)
    assert rpn.proposal_matcher.allow_low_quality_matches
    assert (rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction) == (256, 0.5)
    assert (heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction) == (512, 0.25)
    assert heads.proposal_matcher.high_threshold == 0.5 and not heads.proposal_matcher.allow_low_quality_matches
    assert heads.nms_thresh == 0.5 and heads.score_thresh == 0.05 and heads.detections_per_img == 100
    assert heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    for pool, size in ((heads.box_roi_pool, 7), (heads.mask_roi_pool, 14)):
        assert pool.output_size == (size, size) and pool.sampling_ratio == 0 and pool.strides == [4, 8, 16, 32]
    assert heads.box_predictor.cls_score.out_features == 81 and heads.mask_predictor.mask_fcn_logits.out_channels == 81
    conv_norm = [torch.nn.Conv2d, LayerNorm2d, torch.nn.ReLU]
    box_head = list(heads.box_head)  # 4 conv + 1 fc
    assert [[type(m) for m in block] for block in box_head[:4]] == [conv_norm] * 4
    assert [type(m) for m in box_head[4:]] == [torch.nn.Flatten, torch.nn.Linear, torch.nn.ReLU]
    assert box_head[5].out_features == 1024
    assert [[type(m) for m in block] for block in heads.mask_head] == [conv_norm] * 4


def test_heads_start_from_detectron2s_initialisation():
    """c2_xavier_fill on the box head's fc (uniform, bound sqrt(3 / fan_in)), zero biases, near-zero predictors, and
    zero background rows in the predictors (torchvision's, which detectron2 has not)."""
    torch.manual_seed(0)
    heads = build_mask_rcnn(3, "tiny", **TINY).roi_heads
    fc = heads.box_head[5]
    bound = math.sqrt(3 / fc.in_features)
    assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.95 * bound and not fc.bias.any()
    assert not heads.mask_predictor.conv5_mask.bias.any()
    box, mask = heads.box_predictor, heads.mask_predictor
    assert not box.bbox_pred.weight[:4].any() and not mask.mask_fcn_logits.weight[0].any()
    assert 0.0005 < box.bbox_pred.weight[4:].std() < 0.0015 and 0.005 < box.cls_score.weight.std() < 0.015


def test_vit_base_optimizer_has_vitdet_layer_decay_and_weight_decay(vit_base_detector):
    """ViTDet: lr x 0.7 ** (13 - layer id); weight decay 0.1 on every parameter but pos_embed and the ViT's
    LayerNorms (biases, rel_pos tables and the pyramid's and heads' channels-first LayerNorms included)."""
    optimizer = vitdet_adamw(vit_base_detector, 1e-4, 0.1, 0.7, (0.9, 0.999))
    lr_of = {name: group["lr"] for group in optimizer.param_groups for name in group["param_names"]}
    decay_of = {name: group["weight_decay"] for group in optimizer.param_groups for name in group["param_names"]}
    assert set(decay_of) == {name for name, _ in vit_base_detector.named_parameters()}
    spared = re.compile(r"backbone\.net\.(pos_embed|blocks\.\d+\.norm[12]\.(weight|bias))")
    assert {name: decay for name, decay in decay_of.items() if decay != 0.1} == {
        name: 0.0 for name in decay_of if spared.fullmatch(name)}
    assert len([name for name in decay_of if spared.fullmatch(name)]) == 1 + 12 * 4
    for name in ("backbone.net.blocks.0.attn.qkv.bias", "backbone.net.blocks.2.attn.rel_pos_h",
                 "backbone.pyramid.outputs.0.0.1.weight", "roi_heads.box_head.0.1.bias", "rpn.head.conv.0.0.bias"):
        assert decay_of[name] == 0.1, name
    assert lr_of["backbone.net.patch_embed.proj.weight"] == pytest.approx(1e-4 * 0.7 ** 13)
    assert lr_of["backbone.net.pos_embed"] == pytest.approx(1e-4 * 0.7 ** 13)
    assert lr_of["backbone.net.blocks.0.attn.rel_pos_w"] == pytest.approx(1e-4 * 0.7 ** 12)
    assert lr_of["backbone.net.blocks.11.mlp.fc1.weight"] == pytest.approx(1e-4 * 0.7)
    assert lr_of["backbone.pyramid.outputs.0.0.0.weight"] == lr_of["roi_heads.box_predictor.bbox_pred.weight"] == 1e-4


def test_a_mask_filling_its_box_gives_an_all_ones_target():
    """Aligned RoIAlign samples inside the box; torchvision's aligned=False targets lose the far rows (0.29)."""
    masks = torch.zeros(2, 40, 40, dtype=torch.uint8)
    masks[0, 5:17, 3:23] = 1
    masks[1, 20:38, 30:37] = 1
    boxes = torch.tensor([[3.0, 5.0, 23.0, 17.0], [30.0, 20.0, 37.0, 38.0], [30.0, 20.0, 37.0, 38.0]])
    targets = mask_targets(masks, boxes, torch.tensor([0, 1, 0]), 14)
    assert targets.shape == (3, 14, 14) and targets.dtype == torch.float32
    assert (targets[:2] == 1).all() and (targets[2] == 0).all()  # the third box holds none of mask 0


def test_mask_loss_is_bce_of_the_gt_class_against_the_box_crop():
    """Boxes 28 px wide on even pixels: each of the 14 x 14 cells averages a 2 x 2 block of the mask."""
    generator = torch.Generator().manual_seed(0)
    masks = [(torch.rand(2, 64, 64, generator=generator) > 0.5).to(torch.uint8), torch.zeros(0, 64, 64)]
    boxes = [torch.tensor([[4.0, 8.0, 32.0, 36.0], [30.0, 2.0, 58.0, 30.0], [4.0, 8.0, 32.0, 36.0]]),
             torch.zeros(0, 4)]
    none = torch.zeros(0, dtype=torch.int64)
    matched, labels = [torch.tensor([1, 0, 0]), none], [torch.tensor([3, 1]), none]
    logits = torch.randn(3, 4, 14, 14, generator=generator)
    loss = mask_loss(logits, boxes, masks, labels, matched)
    expected = []
    for i, (box, gt) in enumerate(zip(boxes[0].int().tolist(), matched[0].tolist(), strict=True)):
        x0, y0, x1, y1 = box
        crop = masks[0][gt, y0:y1, x0:x1].float().reshape(14, 2, 14, 2).mean(dim=(1, 3))
        target, x = (crop >= 0.5).float(), logits[i, labels[0][gt]]
        expected.append(-(target * F.logsigmoid(x) + (1 - target) * F.logsigmoid(-x)))
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    empty = mask_loss(logits[:0].requires_grad_(), boxes[1:], masks[1:], labels[1:], matched[1:])
    assert empty.item() == 0 and empty.requires_grad


def test_training_gives_five_losses_and_prediction_maps_back_to_the_original_image():
    torch.manual_seed(0)
    model = build_mask_rcnn(3, "tiny", **TINY)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[:, 10:30, 20:50] = 1
    targets = [dict(boxes=torch.tensor([[20.0, 10.0, 50.0, 30.0]]), labels=torch.tensor([2]), masks=masks)] * 2
    metas = [dict(image_id=7, image_size=(64, 48), orig_size=(128, 96), scale=0.5),
             dict(image_id=9, image_size=(64, 64), orig_size=(64, 64), scale=1.0)]
    model.train()
    losses = model(images, targets, metas)
    names = ["loss_rpn_cls", "loss_rpn_loc", "loss_classifier", "loss_box_reg", "loss_mask"]
    assert sorted(losses) == sorted(["loss", *names])
    torch.testing.assert_close(losses["loss"], sum(losses[name] for name in names))
    losses["loss"].backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused  # DDP needs every parameter in the graph
    model.roi_heads.score_thresh = 0.0  # an untrained model: keep every detection
    model.eval()
    with torch.no_grad():
        outputs = model(images, targets, metas, mode="predict")
        assert model(images[:0], [], [], mode="predict", dropped_ids=[3]) == []  # a batch of dropped images
    for output, meta in zip(outputs, metas, strict=True):
        height, width = meta["orig_size"]
        assert output["image_id"] == meta["image_id"] and len(output["boxes"]) > 0
        assert output["masks"].shape == (len(output["boxes"]), height, width) and output["masks"].dtype == torch.bool
        assert (output["boxes"][:, 2] <= width).all() and (output["boxes"][:, 3] <= height).all()
        assert set(output["labels"].tolist()) <= {0, 1, 2}


def test_boxes_are_decoded_in_float32_under_bf16_autocast():
    """torchvision decodes deltas in their dtype: in bf16, corners near 1024 px would fall on an 8 px grid; the
    anchors are float32 whatever the features' dtype."""
    torch.manual_seed(0)
    model = build_mask_rcnn(3, "tiny", score_thresh=0.0, precision="bf16", **TINY).eval()  # predict autocasts
    dtypes = {}

    def record(name):
        def hook(module, inputs, output):
            first = output[0] if isinstance(output, (tuple, list)) else output
            first = first[0] if isinstance(first, (tuple, list)) else first
            dtypes[name] = first.dtype if isinstance(first, torch.Tensor) else next(iter(first.values())).dtype
        return hook

    for name, module in (("backbone", model.backbone), ("anchors", model.rpn.anchor_generator),
                         ("rpn head", model.rpn.head), ("proposals", model.rpn)):
        module.register_forward_hook(record(name))
    metas = [dict(image_id=1, image_size=(64, 64), orig_size=(64, 64), scale=1.0)]
    with torch.no_grad():
        output = model(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8), None, metas, mode="predict")[0]
    assert dtypes.pop("backbone") == torch.bfloat16  # autocast is on
    assert dtypes == {"anchors": torch.float32, "rpn head": torch.float32, "proposals": torch.float32}
    assert output["boxes"].dtype == torch.float32 and len(output["boxes"]) > 0


def test_torchvisions_rpn_and_roi_heads_still_call_what_we_override(monkeypatch):
    """det/model.py overrides methods that torchvision's RegionProposalNetwork.forward and RoIHeads call internally
    (not public API): if an upgrade stops calling them, or calls them with other arguments or return shapes, the
    detector would silently fall back to torchvision's behaviour. This test says which contract broke."""
    from torchvision.models.detection.roi_heads import RoIHeads

    torch.manual_seed(0)
    model = build_mask_rcnn(3, "tiny", **TINY).train()
    calls = {}

    def spy(cls, name):
        original = getattr(cls, name)

        def recorded(self, *args, **kwargs):
            calls[name] = (len(args), sorted(kwargs))
            result = original(self, *args, **kwargs)
            calls[name + " returns"] = len(result)
            return result
        monkeypatch.setattr(cls, name, recorded)

    spy(ViTDetRPN, "compute_loss")
    spy(ViTDetRPN, "filter_proposals")
    spy(RoIHeads, "select_training_samples")
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[:, 10:30, 20:50] = 1
    target = dict(boxes=torch.tensor([[20.0, 10.0, 50.0, 30.0]]), labels=torch.tensor([2]), masks=masks)
    model(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8), [target],
          [dict(image_id=0, image_size=(64, 64), orig_size=(64, 64), scale=1.0)])
    upgrade = "torchvision changed an internal call det/model.py relies on: "
    assert calls.get("filter_proposals") == (4, []), upgrade + (
        "RegionProposalNetwork.forward no longer calls filter_proposals(proposals, objectness, image_shapes, "
        f"num_anchors_per_level) (ViTDetRPN ranks proposals by logit there); saw {calls.get('filter_proposals')}")
    assert calls.get("compute_loss") == (4, []), upgrade + (
        "RegionProposalNetwork.forward no longer calls compute_loss(objectness, pred_bbox_deltas, labels, "
        f"regression_targets) (ViTDetRPN's L1 loss); saw {calls.get('compute_loss')}")
    assert calls.get("select_training_samples returns") == 4, upgrade + (
        "RoIHeads.select_training_samples no longer returns (proposals, matched_idxs, labels, regression_targets), "
        "which ViTDetRoIHeads.forward unpacks")
