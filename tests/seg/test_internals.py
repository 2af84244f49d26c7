"""What seg's training step takes over from mmseg, pinned so that an upgrade fails here saying what broke: our
decode-head losses are bit for bit those of mmseg's loss_by_feat, and the step never makes the host wait for the
device. (What seg relies on to import mmseg at all is pinned in test_imports.)"""
import pytest
import torch
from mmengine.optim import OptimWrapper
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.structures import SegDataSample
from mmseg.structures.sampler import OHEMPixelSampler
from torch.overrides import TorchFunctionMode

from seg.model import build_mmseg_model, upernet_config

IGNORE = 255
CROP = 32


def build(auxiliary_heads: int = 1) -> EncoderDecoder:
    torch.manual_seed(0)
    config = upernet_config(10, CROP, dict(size="tiny", patch_size=8, depth=4, out_indices=(0, 1, 2, 3)), 192,
                            head_channels=32, aux_channels=16, norm="BN")
    if auxiliary_heads > 1:
        config.auxiliary_head = [dict(config.auxiliary_head, in_index=i) for i in range(auxiliary_heads)]
    return build_mmseg_model(config)


def batch() -> dict:
    torch.manual_seed(1)
    samples = []
    for _ in range(2):
        labels = torch.randint(0, 10, (1, CROP, CROP))
        labels[:, :5] = IGNORE
        sample = SegDataSample(gt_sem_seg=PixelData(data=labels))
        sample.set_metainfo(dict(img_shape=(CROP, CROP), ori_shape=(CROP, CROP), pad_shape=(CROP, CROP)))
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 256, (3, CROP, CROP), dtype=torch.uint8) for _ in range(2)],
                data_samples=samples)


@pytest.mark.parametrize("variant", ["plain", "pixel_sampler", "two_auxiliary_heads"])
def test_the_loss_terms_are_mmsegs_bit_for_bit_in_training_mode(variant):
    """Dropout on, both runs from one seed: equal terms also mean the heads run in mmseg's order. acc_seg is the
    mask-free pixel_accuracy, equal to mmseg's accuracy() up to its epsilon."""
    model = build(auxiliary_heads=2 if variant == "two_auxiliary_heads" else 1).train()
    if variant == "pixel_sampler":
        model.decode_head.sampler = OHEMPixelSampler(context=model.decode_head, min_kept=100)
    data = model.data_preprocessor(batch(), training=True)
    torch.manual_seed(2)
    ours = model.loss(data["inputs"], data["data_samples"])
    torch.manual_seed(2)
    reference = EncoderDecoder.loss(model, data["inputs"], data["data_samples"])
    assert list(ours) == list(reference), "mmseg's EncoderDecoder.loss now names or orders its terms differently"
    for key, value in reference.items():
        if key.endswith("acc_seg"):
            torch.testing.assert_close(ours[key], value, msg=key)
        else:
            assert torch.equal(ours[key], value), f"{key}: {ours[key]} != mmseg's {value}"


class HostSyncGuard(TorchFunctionMode):
    """Fails on the calls that make the host wait for the device: reading values, and ops whose output size
    depends on the values (boolean-mask indexing, nonzero). Checkable on a CPU."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.cpu, torch.Tensor.numpy,
             torch.Tensor.nonzero, torch.nonzero, torch.Tensor.masked_select, torch.masked_select, torch.unique}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS or func is torch.Tensor.__getitem__ and self.masks(args[1]):
            raise AssertionError(f"{func.__name__} makes the host wait for the device")
        return func(*args, **(kwargs or {}))

    @staticmethod
    def masks(index) -> bool:
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                   for i in (index if isinstance(index, tuple) else (index,)))


def test_the_guard_catches_mmsegs_accuracy():
    from mmseg.models.losses import accuracy

    with pytest.raises(AssertionError, match="__getitem__ makes the host wait"), HostSyncGuard():
        accuracy(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), ignore_index=IGNORE)


def test_a_training_step_never_waits_for_the_device():
    model = build().train()
    optimizer = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0))
    with HostSyncGuard():
        model.train_step(batch(), optimizer)
    assert {"decode.acc_seg", "aux.acc_seg", "decode.loss_ce", "aux.loss_ce"} <= set(model.running_means.pop())
