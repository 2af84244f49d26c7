"""Whole detectors in detectron2's ViTDet layout: every key and shape as detectron2 defines them, bit-exact round
trips, the same predictions after import (the background rows torchvision adds never matter), safe .pkl reading."""
import math
import pickle

import pytest
import torch

from backbone import CheckpointError, read_checkpoint
from benchmarks.cli import main
from det.checkpoint import load_detector, read_detector, save_detectron2
from det.detectron2_layout import from_detectron2, to_detectron2
from det.model import build_mask_rcnn

CLASSES = 3
HEADS = dict(out_channels=32, head_channels=24, fc_channels=40, anchor_sizes=(8, 16, 32, 64, 128), roi_batch_size=32)
# patch 16 at 128 px: detectron2's own pyramid scales 4, 2, 1, 1/2; patch 8: 2, 1, 1/2, 1/4 (named the same way)
DETECTORS = {16: dict(img_size=128, patch_size=16, depth=2, window_size=4, global_blocks=(1,), pretrain_img_size=64),
             8: dict(img_size=128, patch_size=8, depth=3, window_size=4, global_blocks=(2,), pretrain_img_size=96)}


def detector(patch, seed=0, classes=CLASSES):
    torch.manual_seed(seed)
    model = build_mask_rcnn(classes, "tiny", score_thresh=0.0, **HEADS, **DETECTORS[patch]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # nothing left at its init (zero rel pos, unit norms)
    return model


def conv_norm(key, out, inp, kernel):
    """detectron2's Conv2d(bias=False, norm=LayerNorm): weight, norm.weight, norm.bias."""
    return {f"{key}.weight": (out, inp, kernel, kernel), f"{key}.norm.weight": (out,), f"{key}.norm.bias": (out,)}


def detectron2_vit(dim, depth, patch, grid, window, global_blocks, pretrain_grid):
    """detectron2's ViT (modeling/backbone/vit.py) with use_rel_pos and pretrain_use_cls_token: [CLS] slot kept in
    pos_embed, no cls_token, no final norm; rel-pos tables of 2 x input size - 1 rows, input size the window or grid."""
    head_dim = dim // 3
    keys = {"pos_embed": (1, 1 + pretrain_grid**2, dim), "patch_embed.proj.weight": (dim, 3, patch, patch),
            "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        rows = 2 * (grid if i in global_blocks else window) - 1
        keys |= {f"blocks.{i}.norm1.weight": (dim,), f"blocks.{i}.norm1.bias": (dim,),
                 f"blocks.{i}.attn.qkv.weight": (3 * dim, dim), f"blocks.{i}.attn.qkv.bias": (3 * dim,),
                 f"blocks.{i}.attn.rel_pos_h": (rows, head_dim), f"blocks.{i}.attn.rel_pos_w": (rows, head_dim),
                 f"blocks.{i}.attn.proj.weight": (dim, dim), f"blocks.{i}.attn.proj.bias": (dim,),
                 f"blocks.{i}.norm2.weight": (dim,), f"blocks.{i}.norm2.bias": (dim,),
                 f"blocks.{i}.mlp.fc1.weight": (4 * dim, dim), f"blocks.{i}.mlp.fc1.bias": (4 * dim,),
                 f"blocks.{i}.mlp.fc2.weight": (dim, 4 * dim), f"blocks.{i}.mlp.fc2.bias": (dim,)}
    return {f"backbone.net.{k}": v for k, v in keys.items()}


def detectron2_pyramid(dim, patch, out):
    """detectron2's SimpleFeaturePyramid: stage log2(stride) = simfp_<stage>, a Sequential of the resampling layers
    (scale 4: ConvTranspose2d, LayerNorm, GELU, ConvTranspose2d; 2: ConvTranspose2d; 1: none; 1/k: MaxPool2d) then
    the 1x1 and 3x3 Conv2d with LayerNorm and no bias."""
    keys = {}
    for stride in (4, 8, 16, 32):
        scale, stage = patch / stride, f"backbone.simfp_{int(math.log2(stride))}"
        if scale == 4:
            layers = {"0.weight": (dim, dim // 2, 2, 2), "0.bias": (dim // 2,), "1.weight": (dim // 2,),
                      "1.bias": (dim // 2,), "3.weight": (dim // 2, dim // 4, 2, 2), "3.bias": (dim // 4,)}
            count, width = 4, dim // 4
        elif scale == 2:
            layers, count, width = {"0.weight": (dim, dim // 2, 2, 2), "0.bias": (dim // 2,)}, 1, dim // 2
        else:
            layers, count, width = {}, int(scale < 1), dim
        keys |= {f"{stage}.{k}": v for k, v in layers.items()}
        keys |= conv_norm(f"{stage}.{count}", out, width, 1) | conv_norm(f"{stage}.{count + 1}", out, out, 3)
    return keys


def detectron2_heads(out, head, fc, classes):
    """StandardRPNHead with conv_dims [-1, -1] (conv.conv0 / conv1 with bias), FastRCNNConvFCHead 4 conv + 1 fc with
    LayerNorm, FastRCNNOutputLayers (K + 1 scores, 4K class-specific deltas), MaskRCNNConvUpsampleHead."""
    keys = {"proposal_generator.rpn_head.objectness_logits.weight": (3, out, 1, 1),
            "proposal_generator.rpn_head.objectness_logits.bias": (3,),
            "proposal_generator.rpn_head.anchor_deltas.weight": (12, out, 1, 1),
            "proposal_generator.rpn_head.anchor_deltas.bias": (12,),
            "roi_heads.box_head.fc1.weight": (fc, head * 7 * 7), "roi_heads.box_head.fc1.bias": (fc,),
            "roi_heads.box_predictor.cls_score.weight": (classes + 1, fc),
            "roi_heads.box_predictor.cls_score.bias": (classes + 1,),
            "roi_heads.box_predictor.bbox_pred.weight": (4 * classes, fc),
            "roi_heads.box_predictor.bbox_pred.bias": (4 * classes,),
            "roi_heads.mask_head.deconv.weight": (head, head, 2, 2), "roi_heads.mask_head.deconv.bias": (head,),
            "roi_heads.mask_head.predictor.weight": (classes, head, 1, 1),
            "roi_heads.mask_head.predictor.bias": (classes,)}
    for k in range(2):
        keys |= {f"proposal_generator.rpn_head.conv.conv{k}.weight": (out, out, 3, 3),
                 f"proposal_generator.rpn_head.conv.conv{k}.bias": (out,)}
    for k in range(1, 5):
        keys |= conv_norm(f"roi_heads.box_head.conv{k}", head, out if k == 1 else head, 3)
        keys |= conv_norm(f"roi_heads.mask_head.mask_fcn{k}", head, out if k == 1 else head, 3)
    return keys


def images(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8, generator=generator)


def predict(model, pixels):
    metas = [dict(image_id=1, image_size=(128, 128), orig_size=(128, 128), scale=1.0)]
    with torch.no_grad():
        return model(pixels, None, metas, mode="predict")[0]


@pytest.mark.parametrize("patch", sorted(DETECTORS))
def test_every_exported_key_and_shape_is_detectron2s(patch):
    config = DETECTORS[patch]
    grid, pretrain_grid = config["img_size"] // patch, config["pretrain_img_size"] // patch
    expected = detectron2_vit(192, config["depth"], patch, grid, config["window_size"], config["global_blocks"],
                              pretrain_grid)
    expected |= detectron2_pyramid(192, patch, HEADS["out_channels"])
    expected |= detectron2_heads(HEADS["out_channels"], HEADS["head_channels"], HEADS["fc_channels"], CLASSES)
    exported = to_detectron2(detector(patch).state_dict())
    assert {k: tuple(v.shape) for k, v in exported.items()} == expected


@pytest.mark.parametrize("patch", sorted(DETECTORS))
def test_round_trips_are_bit_exact_and_background_rows_are_moved_or_zero(patch):
    ours = detector(patch).state_dict()
    exported = to_detectron2(ours)
    scores = ours["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(exported["roi_heads.box_predictor.cls_score.weight"], torch.cat([scores[1:], scores[:1]]))
    deltas = ours["roi_heads.box_predictor.bbox_pred.bias"]
    assert torch.equal(exported["roi_heads.box_predictor.bbox_pred.bias"], deltas[4:])
    assert torch.equal(exported["backbone.net.pos_embed"][:, 1:], ours["backbone.net.pos_embed"])
    assert not exported["backbone.net.pos_embed"][:, 0].any()
    back = from_detectron2(exported)
    assert list(back) == list(ours)
    unused = {"roi_heads.box_predictor.bbox_pred": 4, "roi_heads.mask_predictor.mask_fcn_logits": 1}
    for key, value in ours.items():
        rows = unused.get(key.rsplit(".", 1)[0], 0)
        assert torch.equal(back[key][rows:], value[rows:]), key
        assert not back[key][:rows].any(), key  # the background rows torchvision needs, zero
    again = to_detectron2(back)
    assert list(again) == list(exported) and all(torch.equal(again[k], v) for k, v in exported.items())


def test_a_fresh_detector_round_trips_bit_exactly():
    """Its background box deltas and mask logits start at zero, so nothing is lost on the way through detectron2."""
    torch.manual_seed(0)
    fresh = build_mask_rcnn(CLASSES, "tiny", **HEADS, **DETECTORS[16]).state_dict()
    back = from_detectron2(to_detectron2(fresh))
    assert list(back) == list(fresh) and all(torch.equal(back[k], v) for k, v in fresh.items())


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_an_imported_detectron2_file_predicts_as_the_original(tmp_path, suffix):
    original = detector(8)
    with torch.no_grad():  # rows no prediction reads: large values must change nothing
        original.roi_heads.box_predictor.bbox_pred.weight[:4].fill_(50.0)
        original.roi_heads.mask_predictor.mask_fcn_logits.weight[0].fill_(50.0)
    path = save_detectron2(original.state_dict(), tmp_path / "model_final.pth")
    if suffix == ".pkl":  # detectron2's model zoo: a plain pickle of numpy arrays
        model = torch.load(path, weights_only=True)["model"]
        path = tmp_path / "model_final_abc123.pkl"
        with path.open("wb") as handle:
            pickle.dump({"model": {k: v.numpy() for k, v in model.items()}, "__author__": "test",
                         "matching_heuristics": True}, handle)
    assert read_checkpoint(path).format == "detectron2"
    imported = detector(8, seed=1)
    load_detector(imported, path)
    expected, got = predict(original, images()), predict(imported, images())
    assert len(expected["boxes"]) > 10  # score_thresh 0: random weights still detect
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(got[key], expected[key]), key


def test_detectron2_buffers_are_ignored_and_anything_else_is_an_error_naming_keys(tmp_path):
    exported = to_detectron2(detector(16).state_dict())
    with_buffers = {**exported, "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1),
                    "proposal_generator.anchor_generator.cell_anchors.0": torch.zeros(3, 4)}
    assert list(from_detectron2(with_buffers)) == list(from_detectron2(exported))
    extra = {**exported, "roi_heads.keypoint_head.conv1.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected keys roi_heads\.keypoint_head\.conv1\.weight; missing "
                                              r"keys -"):
        from_detectron2(extra)
    missing = {k: v for k, v in exported.items() if k != "roi_heads.mask_head.deconv.bias"}
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth: .*missing keys roi_heads\.mask_head\.deconv\.bias"):
        read_detector(tmp_path / "missing.pth")


def test_a_detector_of_another_config_is_refused_naming_keys_and_shapes(tmp_path):
    path = save_detectron2(detector(16).state_dict(), tmp_path / "d2.pth")
    wider = build_mask_rcnn(CLASSES, "tiny", **{**HEADS, "head_channels": 16}, **DETECTORS[16])
    with pytest.raises(CheckpointError, match=r"d2\.pth: not a model of this config: 0 keys missing .* of another "
                                              r"shape \(checkpoint vs model: roi_heads\.box_head\.0\.0\.weight "
                                              r"\(24, 32, 3, 3\) vs \(16, 32, 3, 3\)"):
        load_detector(wider, path)
    encoder_only = tmp_path / "encoder.pth"
    torch.save({"model": {k: v for k, v in torch.load(path, weights_only=True)["model"].items()
                          if k.startswith("backbone.net.")}}, encoder_only)
    with pytest.raises(CheckpointError, match=r"encoder\.pth: not a whole detector"):
        load_detector(wider, encoder_only)


def test_convert_writes_a_whole_detector_whole_and_its_vit_on_request(tmp_path, capsys):
    exported = to_detectron2(detector(16).state_dict())
    source = tmp_path / "model_final_abc123.pkl"
    source.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in exported.items()}, "__author__": "test"}))
    assert main(["convert", str(source), str(tmp_path / "model_final.pth"), "--to", "detectron2"]) == 0
    assert "the whole detector" in capsys.readouterr().out
    written = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert list(written) == list(exported) and all(torch.equal(written[k], v) for k, v in exported.items())
    assert main(["convert", str(source), str(tmp_path / "vit.pth"), "--to", "detectron2", "--prefix",
                 "backbone.net."]) == 0
    vit = torch.load(tmp_path / "vit.pth", weights_only=True)["model"]
    assert set(vit) == {k for k in exported if k.startswith("backbone.net.")}
    assert main(["convert", str(source), str(tmp_path / "o.pth"), "--to", "detectron2", "--img-size", "256"]) == 2
    assert "model_final_abc123.pkl: --img-size resamples an encoder" in capsys.readouterr().err
