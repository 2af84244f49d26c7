"""ViTDet's inference path as detectron2 defines it (anchors, proposal ranking, final detections, rescaling,
padding), each against detectron2's definition written out here and, where torchvision differs, a case that
shows the difference."""
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms

from det.anchors import ViTDetAnchorGenerator, cell_anchors
from det.model import ViTDetRPN, build_mask_rcnn, detect, to_original_image
from det.pooler import pyramid_levels

RATIOS = (0.5, 1.0, 2.0)


def test_cell_anchors_are_detectron2s_and_not_rounded():
    golden = torch.tensor([[-22.627417, -11.313708, 22.627417, 11.313708], [-16.0, -16.0, 16.0, 16.0],
                           [-11.313708, -22.627417, 11.313708, 22.627417]])
    torch.testing.assert_close(cell_anchors(32, RATIOS), golden, rtol=0, atol=1e-6)
    for size in (32, 64, 128, 256, 512):  # detectron2: w = sqrt(size^2 / ratio), h = ratio * w, centred on 0
        widths = [math.sqrt(size**2 / ratio) for ratio in RATIOS]
        expected = torch.tensor([[-w / 2, -r * w / 2, w / 2, r * w / 2] for w, r in zip(widths, RATIOS, strict=True)])
        assert torch.equal(cell_anchors(size, RATIOS), expected)
    rounded = AnchorGenerator(((32,),), (RATIOS,)).cell_anchors[0]  # torchvision's: whole pixels
    assert rounded[0].tolist() == [-23.0, -11.0, 23.0, 11.0]


def test_anchors_tile_every_location_at_fixed_strides_in_the_rpn_heads_order():
    generator = ViTDetAnchorGenerator((8, 16), RATIOS, strides=(8, 64))
    features = [torch.zeros(1, 4, 2, 3), torch.zeros(1, 4, 2, 2)]  # a 96 px canvas: torchvision infers stride 48
    anchors = generator(ImageList(torch.zeros(2, 3, 96, 96), [(96, 96), (80, 60)]), features)
    assert len(anchors) == 2 and torch.equal(anchors[0], anchors[1])
    assert anchors[0].shape == ((2 * 3 + 2 * 2) * 3, 4)
    for level, (size, stride, (height, width)) in enumerate(((8, 8, (2, 3)), (16, 64, (2, 2)))):
        start = 0 if level == 0 else 2 * 3 * 3
        for y in range(height):
            for x in range(width):
                for a in range(3):  # location-major, then the aspect ratio: the RPN head's flattening order
                    shift = torch.tensor([x * stride, y * stride] * 2, dtype=torch.float32)
                    row = start + (y * width + x) * 3 + a
                    assert torch.equal(anchors[0][row], cell_anchors(size, RATIOS)[a] + shift)


def rpn(pre_nms: int = 1000, post_nms: int = 1000) -> ViTDetRPN:
    model = build_mask_rcnn(3, "tiny", img_size=64, depth=1, window_size=0, global_blocks=(0,), out_channels=16,
                            head_channels=16, fc_channels=16, anchor_sizes=(8, 16, 32, 64, 128))
    model.rpn._pre_nms_top_n = dict(training=pre_nms, testing=pre_nms)
    model.rpn._post_nms_top_n = dict(training=post_nms, testing=post_nms)
    return model.rpn.eval()


def grid_boxes(count: int, offset: float) -> torch.Tensor:
    """`count` disjoint 8 x 8 boxes on a 20-column grid."""
    index = torch.arange(count, dtype=torch.float32)
    x, y = (index % 20) * 10 + offset, (index // 20) * 10 + offset
    return torch.stack([x, y, x + 8, y + 8], dim=1)


def test_proposals_are_ranked_by_logit_across_levels():
    """300 proposals of one level with logits 18-20, 300 of the next with 25-30, overlapping across levels: the best
    100 are all of the second level. Ranked by sigmoid (torchvision) all 600 score exactly 1.0 in float32."""
    logits = torch.cat([torch.linspace(18, 20, 300), torch.linspace(25, 30, 300)])
    assert (torch.sigmoid(logits) == 1.0).all()
    boxes = torch.cat([grid_boxes(300, 0.0), grid_boxes(300, 1.0)])
    kept, scores = rpn(post_nms=100).filter_proposals(boxes[None], logits[:, None], [(400, 400)], [300, 300])
    assert torch.equal(scores[0], torch.linspace(25, 30, 300).flip(0)[:100])
    assert torch.equal(kept[0], grid_boxes(300, 1.0).flip(0)[:100])


def test_proposals_keep_any_area_and_leave_out_empty_and_non_finite_boxes():
    boxes = torch.tensor([[10.0, 10.0, 10.0001, 30.0],  # 1e-4 px wide: detectron2 keeps it (torchvision: < 1e-3 out)
                          [50.0, 5.0, 60.0, 5.0],  # no height
                          [120.0, 0.0, 130.0, 10.0],  # right of the image: nothing left after clipping
                          [0.0, 0.0, float("nan"), 10.0],
                          [-float("inf"), 0.0, float("inf"), 10.0],  # clipping would make it the image's width
                          [-5.0, -5.0, 20.0, 150.0]])  # clipped to the image
    logits = torch.arange(6, dtype=torch.float32)
    kept, scores = rpn().filter_proposals(boxes[None], logits[:, None], [(100, 110)], [6])
    assert scores[0].tolist() == [5.0, 0.0]
    assert torch.equal(kept[0], torch.tensor([[0.0, 0.0, 20.0, 100.0], [10.0, 10.0, 10.0001, 30.0]]))


def reference_rpn_selection(proposals, logits, image_sizes, counts, pre_nms, post_nms, nms_thresh):
    """detectron2's find_top_rpn_proposals, written from its definition."""
    top_boxes, top_logits, level_ids, start = [], [], [], 0
    for level, count in enumerate(counts):
        values, index = logits[:, start:start + count].topk(min(count, pre_nms), dim=1)
        top_boxes.append(torch.stack([p[i + start] for p, i in zip(proposals, index, strict=True)]))
        top_logits.append(values)
        level_ids.append(torch.full((values.shape[1],), level))
        start += count
    top_boxes, top_logits, level_ids = torch.cat(top_boxes, 1), torch.cat(top_logits, 1), torch.cat(level_ids)
    out = []
    for boxes, scores, (height, width) in zip(top_boxes, top_logits, image_sizes, strict=True):
        boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                             boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
        keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        boxes, scores, levels = boxes[keep], scores[keep], level_ids[keep]
        keep = batched_nms(boxes, scores, levels, nms_thresh)[:post_nms]
        out.append((boxes[keep], scores[keep]))
    return out


def test_proposal_selection_equals_detectron2s_definition():
    generator = torch.Generator().manual_seed(0)
    counts = [400, 200, 60]
    centres = torch.rand(2, sum(counts), 2, generator=generator) * 140 - 10
    sides = torch.rand(2, sum(counts), 2, generator=generator) * 60
    proposals = torch.cat([centres - sides / 2, centres + sides / 2], dim=2)
    logits = torch.randn(2, sum(counts), generator=generator) * 12  # many above 17
    image_sizes = [(120, 100), (90, 128)]
    kept, scores = rpn(pre_nms=150, post_nms=120).filter_proposals(proposals, logits.reshape(-1, 1), image_sizes,
                                                                   counts)
    for (boxes, expected_scores), got_boxes, got_scores in zip(
            reference_rpn_selection(proposals, logits, image_sizes, counts, 150, 120, 0.7), kept, scores, strict=True):
        assert len(boxes) == 120
        assert torch.equal(got_boxes, boxes) and torch.equal(got_scores, expected_scores)


def reference_detections(class_logits, boxes, image_size, score_thresh, nms_thresh, topk):
    """detectron2's fast_rcnn_inference_single_image, written from its definition: its predictor puts the
    background last and regresses no background box."""
    scores = torch.softmax(torch.cat([class_logits[:, 1:], class_logits[:, :1]], dim=1), dim=1)[:, :-1]
    height, width = image_size
    boxes = boxes[:, 1:].reshape(-1, 4)
    boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                         boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1).view(len(scores), -1, 4)
    mask = scores > score_thresh
    index = mask.nonzero()
    boxes, scores = boxes[mask], scores[mask]
    keep = batched_nms(boxes, scores, index[:, 1], nms_thresh)[:topk]
    return boxes[keep], scores[keep], index[keep, 1]


def test_final_detections_equal_detectron2s_definition_degenerate_boxes_included():
    generator = torch.Generator().manual_seed(0)
    proposals, classes = 300, 5
    class_logits = torch.randn(proposals, classes + 1, generator=generator) * 2
    corners = torch.rand(proposals, classes + 1, 2, generator=generator) * 120
    sides = torch.rand(proposals, classes + 1, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + sides], dim=2)
    boxes[:20, :, 0] = 99.995  # 0.005 px wide after clipping to the 100 px wide image: torchvision drops these
    boxes[20:30, :, 0] = 150.0  # right of the image: no width left after clipping, still a detectron2 detection
    got = detect(class_logits, boxes, (110, 100), 0.05, 0.5, 100)
    expected = reference_detections(class_logits, boxes, (110, 100), 0.05, 0.5, 100)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-6, atol=1e-7)  # softmax over reordered logits
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2] + 1)
    widths = got[0][:, 2] - got[0][:, 0]
    assert ((widths > 0) & (widths < 0.01)).any() and (widths == 0).any() and len(got[0]) == 100


def test_detections_are_rescaled_per_axis_and_boxes_without_area_dropped():
    """detectron2's detector_postprocess: a 427 x 640 image tested at 683 x 1024 is scaled back by 427 / 683 in y
    and 640 / 1024 in x; boxes left without area are dropped with their scores, labels and masks."""
    boxes = torch.tensor([[100.0, 200.0, 300.0, 400.0], [1024.0, 10.0, 1024.0, 50.0], [10.0, 600.0, 50.0, 683.0]])
    detection = dict(boxes=boxes, scores=torch.tensor([0.9, 0.8, 0.7]), labels=torch.tensor([1, 2, 3]),
                     masks=torch.ones(3, 1, 28, 28))
    meta = dict(image_id=4, orig_size=(427, 640), image_size=(683, 1024), scale=0.625)
    out = to_original_image(detection, meta)
    expected = torch.tensor([[100 * 0.625, 200 * 427 / 683, 300 * 0.625, 400 * 427 / 683],
                             [10 * 0.625, 600 * 427 / 683, 50 * 0.625, 427.0]])
    torch.testing.assert_close(out["boxes"], expected)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7]) and out["labels"].tolist() == [0, 2]
    assert out["masks"].shape == (2, 427, 640) and out["masks"][1, 420:, 10:30].all()


def test_box_levels_follow_detectron2_at_power_of_two_sizes():
    """floor(4 + log2(sqrt(area) / 224 + 1e-8)): a box just under 112 px goes to p2 (index 0 of p2-p5); torchvision
    adds 1e-6 after the logarithm and sends it to p3."""
    side = torch.tensor(111.99995)
    boxes = torch.tensor([[0.0, 0.0, side, side], [0.0, 0.0, 112.0, 112.0], [0.0, 0.0, 20.0, 20.0],
                          [0.0, 0.0, 900.0, 900.0]])
    assert pyramid_levels(boxes, 2, 5).tolist() == [0, 1, 0, 3]
    assert math.floor(4 + math.log2(float(side) / 224) + 1e-6) == 3  # torchvision's choice


def test_padding_is_zero_after_normalisation():
    model = build_mask_rcnn(3, "tiny", img_size=64, depth=1, window_size=0, global_blocks=(0,), out_channels=16,
                            head_channels=16, fc_channels=16, anchor_sizes=(8, 16, 32, 64, 128))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    pixels = model.normalise(images, [(40, 64), (64, 30)])
    expected = (images.float() - model.mean) / model.std
    assert torch.equal(pixels[0, :, :40], expected[0, :, :40]) and not pixels[0, :, 40:].any()
    assert torch.equal(pixels[1, :, :, :30], expected[1, :, :, :30]) and not pixels[1, :, :, 30:].any()
