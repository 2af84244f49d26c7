"""ViTDet Mask R-CNN on torchvision: the L1 losses against their formulas, the ViT-B build, and the output format."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from backbone import param_groups_layer_decay
from det.model import L1RegionProposalNetwork, box_losses, build_mask_rcnn
from det.train import BACKBONE_PREFIX

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
    rpn = L1RegionProposalNetwork.__new__(L1RegionProposalNetwork)
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


def test_vit_base_detector_builds_with_vitdet_heads_and_layer_decay():
    with torch.device("meta"):
        model = build_mask_rcnn(80, "base")
    parameters = sum(p.numel() for p in model.parameters())
    assert 105e6 < parameters < 115e6, parameters  # ViTDet's ViT-B Mask R-CNN: 111M
    heads = model.roi_heads
    assert heads.fg_bg_sampler.batch_size_per_image == 512 and heads.detections_per_img == 100
    assert heads.box_predictor.cls_score.out_features == 81 and heads.mask_predictor.mask_fcn_logits.out_channels == 81
    assert len(model.rpn.head.conv) == 2
    assert [type(m).__name__ for m in heads.box_head[0]] == ["Conv2d", "LayerNorm2d", "ReLU"]
    assert model.backbone.net.pos_embed.requires_grad
    groups = param_groups_layer_decay(model, 1e-4, 0.1, 0.7, 12, backbone_prefix=BACKBONE_PREFIX)
    lr_of = {name: group["lr"] for group in groups for name in group["param_names"]}
    decay_of = {name: group["weight_decay"] for group in groups for name in group["param_names"]}
    assert lr_of["backbone.net.patch_embed.proj.weight"] == pytest.approx(1e-4 * 0.7 ** 13)
    assert lr_of["backbone.net.blocks.11.mlp.fc1.weight"] == pytest.approx(1e-4 * 0.7)
    assert lr_of["backbone.pyramid.outputs.0.0.0.weight"] == lr_of["roi_heads.box_predictor.bbox_pred.weight"] == 1e-4
    assert decay_of["backbone.net.pos_embed"] == 0 and decay_of["backbone.net.blocks.0.norm1.weight"] == 0
    assert decay_of["backbone.net.blocks.0.attn.qkv.weight"] == 0.1


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
    for output, meta in zip(outputs, metas, strict=True):
        height, width = meta["orig_size"]
        assert output["image_id"] == meta["image_id"] and len(output["boxes"]) > 0
        assert output["masks"].shape == (len(output["boxes"]), height, width) and output["masks"].dtype == torch.bool
        assert (output["boxes"][:, 2] <= width).all() and (output["boxes"][:, 3] <= height).all()
        assert set(output["labels"].tolist()) <= {0, 1, 2}


def test_boxes_are_decoded_in_float32_under_bf16_autocast():
    """torchvision decodes deltas in their dtype and makes anchors in the features' dtype: in bf16, corners near
    1024 px would fall on an 8 px grid."""
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
