"""The segmentor's training step stays off the host: the logged acc_seg is mmseg's value computed without boolean
indexing (which waits for the GPU), and batches are copied to the device without blocking."""
import pytest
import torch
from mmengine.optim import OptimWrapper
from mmengine.structures import PixelData
from mmseg.models import SegDataPreProcessor
from mmseg.models.losses import accuracy
from mmseg.models.segmentors import EncoderDecoder
from mmseg.structures import SegDataSample

from engine import load_config
from seg.model import pixel_accuracy, upernet_config
from seg.train import CONFIGS_DIR, build_segmentor

IGNORE = 255


def test_pixel_accuracy_equals_mmseg_accuracy_with_ignored_pixels():
    """Two 2 x 3 maps, three classes, three ignored pixels: counting them would change the value."""
    predicted = torch.tensor([[[0, 1, 2], [2, 0, 0]], [[1, 1, 1], [0, 2, 0]]])
    labels = torch.tensor([[[0, 1, 1], [IGNORE, 0, 2]], [[1, 0, IGNORE], [0, 2, IGNORE]]])
    logits = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    ours = pixel_accuracy(logits, labels, ignore_index=IGNORE)
    assert ours.shape == (1,)
    torch.testing.assert_close(ours, torch.tensor([100 * 6 / 9]))  # 9 labelled pixels, 6 right
    torch.testing.assert_close(ours, accuracy(logits, labels, ignore_index=IGNORE))


def test_all_pixels_ignored_gives_zero_not_a_division_by_zero():
    logits, labels = torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), IGNORE)
    assert pixel_accuracy(logits, labels, ignore_index=IGNORE).tolist() == [0.0]


def batch(size: int = 64) -> dict:
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (1, size, size))
    labels[:, :8] = IGNORE
    samples = [SegDataSample(gt_sem_seg=PixelData(data=labels.clone())) for _ in range(2)]
    for sample in samples:
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
    return dict(inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in range(2)],
                data_samples=samples)


@pytest.fixture(scope="module")
def model():
    cfg = load_config("upernet_tiny_synth", configs_dir=CONFIGS_DIR)
    return build_segmentor(cfg, 10)


def test_the_losses_and_accuracies_of_both_heads_are_mmsegs(model):
    """In eval mode (no dropout), so that mmseg's own EncoderDecoder.loss sees the same logits."""
    model.eval()
    data = model.data_preprocessor(batch(), training=True)
    ours = model.loss(data["inputs"], data["data_samples"])
    reference = EncoderDecoder.loss(model, data["inputs"], data["data_samples"])
    assert set(ours) == set(reference) >= {"decode.acc_seg", "aux.acc_seg", "decode.loss_ce", "aux.loss_ce"}
    for key, value in reference.items():
        torch.testing.assert_close(ours[key], value, msg=key)


def test_a_training_step_never_calls_mmsegs_masked_accuracy(model, monkeypatch):
    """A CPU-checkable proxy for 'no host sync in the step': mmseg's accuracy() sizes a boolean-masked copy."""
    def fail(*args, **kwargs):
        raise AssertionError("mmseg's accuracy() was called")

    monkeypatch.setattr("mmseg.models.decode_heads.decode_head.accuracy", fail)
    model.train()
    model.train_step(batch(), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0)))
    logged = model.running_means.pop()
    assert {"decode.acc_seg", "aux.acc_seg"} <= set(logged)
    assert 0 <= logged["decode.acc_seg"].item() <= 100


def test_batches_are_copied_to_the_device_without_blocking(model, monkeypatch):
    """mmseg's SegDataPreProcessor takes no non_blocking argument; the default would wait on every copy."""
    copies = []
    tensor_to = torch.Tensor.to

    def record(tensor, *args, **kwargs):
        copies.append(kwargs.get("non_blocking"))
        return tensor_to(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", record)
    model.data_preprocessor(batch(), training=True)
    assert len(copies) >= 4 and all(copies), copies  # two images, two label maps


@pytest.mark.parametrize("training", [True, False])
def test_preprocessing_equals_mmsegs_with_the_channel_swap(model, training):
    """The channels are swapped by flip instead of mmseg's index list; the images and labels are mmseg's."""
    config = dict(upernet_config(10, 64, {}, 192).data_preprocessor)
    assert config.pop("type") == "NonBlockingSegDataPreProcessor" and config["bgr_to_rgb"]
    ours = model.data_preprocessor(batch(), training=training)
    reference = SegDataPreProcessor(**config)(batch(), training=training)
    for mine, theirs in zip(ours["inputs"], reference["inputs"], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    for mine, theirs in zip(ours["data_samples"], reference["data_samples"], strict=True):
        assert torch.equal(mine.gt_sem_seg.data, theirs.gt_sem_seg.data)


def test_preprocessing_indexes_no_image_with_a_list(model, monkeypatch):
    """A CPU-checkable proxy for the host sync mmseg's channel swap costs on a GPU: a list index is a tensor that is
    copied to the device, and the copy waits."""
    list_indexed = []
    getitem = torch.Tensor.__getitem__

    def record(tensor, index):
        list_indexed.append(isinstance(index, tuple) and any(isinstance(part, list) for part in index))
        return getitem(tensor, index)

    monkeypatch.setattr(torch.Tensor, "__getitem__", record)
    model.data_preprocessor(batch(), training=True)
    assert not any(list_indexed)
