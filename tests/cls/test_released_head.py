"""`cls linear` with `linear.head`: a released linear head scores the cached val features it was trained on, read in
DINOv2's linear-input order, with nothing trained and the train split never read."""
import json
from pathlib import Path

import pytest
import torch

from backbone import build_vit, export_checkpoint
from benchmarks.synthetic.ramps import write_direction_task
from cls import frozen
from engine.errors import UserInputError
from engine.images import eval_transform, image_folder

WIDTH, CLASSES = 192, 4  # ViT-tiny; the ramps' 4 directions


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("released_head")
    write_direction_task(root / "data", 2, 6, seed=0)
    torch.manual_seed(0)
    net = build_vit("tiny", img_size=64, depth=4).eval()
    export_checkpoint(net, root / "encoder.safetensors")
    return root, net


def dinov2_linear_input(net, images: torch.Tensor, blocks: int) -> torch.Tensor:
    """What DINOv2's linear evaluation feeds its head (create_linear_input over get_intermediate_layers(n, norm=True)):
    the [CLS] of the last `blocks` blocks from the earliest, then the last block's mean patch token."""
    x, grid = net.embed(images)
    depth = net.num_layers
    last, kept = net.run_blocks(x, grid, keep=range(depth - blocks, depth - 1))
    x_tokens_list = [(tokens[:, 1:], tokens[:, 0]) for tokens in map(net.norm, [*kept, last])]
    return torch.cat([cls for _, cls in x_tokens_list] + [x_tokens_list[-1][0].mean(dim=1)], dim=1)


def save_head(path: Path, width: int, classes: int = CLASSES, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(width)
    weight, bias = torch.randn(classes, width, generator=gen), torch.randn(classes, generator=gen)
    torch.save({f"{prefix}weight": weight, f"{prefix}bias": bias}, path)
    return weight, bias


def overrides(root: Path, head: Path, **more) -> dict:
    return {"ckpt": root / "encoder.safetensors", "data.root": root / "data", "model.depth": 4,
            "features.last_layers": 4, "features.cache_dir": root / "cache", "work_dir": root / head.stem,
            "linear.head": head, **more}


@pytest.mark.parametrize(("blocks", "feature", "prefix"), [(4, "cls4+avg", ""), (1, "cls+avg", "linear.")])
def test_a_released_head_scores_dinov2s_linear_input(setup, blocks, feature, prefix):
    root, net = setup
    weight, bias = save_head(root / f"head_{blocks}.pth", (blocks + 1) * WIDTH, prefix=prefix)
    metrics = json.loads(frozen.run_linear("linear_tiny_ramps", overrides(root, root / f"head_{blocks}.pth"))
                         .read_text())
    val = image_folder(root / "data", "val", eval_transform(64))
    images = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():  # the cache keeps float16 rows
        logits = dinov2_linear_input(net, images, blocks).half().float() @ weight.T + bias
    expected = 100.0 * (logits.argmax(1) == torch.tensor(val.targets)).double().mean().item()
    assert metrics["feature"] == feature and metrics["last"] == {"top1": pytest.approx(expected)}
    assert "heads" not in metrics  # nothing trained
    assert [path.name.split("-")[0] for path in (root / "cache").iterdir()] == ["val"]  # train never extracted


@pytest.mark.parametrize(("change", "message"), [
    (dict(width=3 * WIDTH), "reads 576 values per image; the cached features are cls 192, cls\\+avg 384"),
    (dict(width=2 * WIDTH, classes=10), "has 10 classes; .*/val has 4"),
    (dict(width=2 * WIDTH, two=True), "expected one 'weight' and its 'bias'"),
])
def test_a_head_that_does_not_fit_is_named(setup, change, message):
    root, _ = setup
    head = root / "bad_head.pth"
    save_head(head, change["width"], change.get("classes", CLASSES))
    if change.get("two"):
        torch.save({**torch.load(head), "other.weight": torch.zeros(1, 1)}, head)
    with pytest.raises(UserInputError, match=message):
        frozen.run_linear("linear_tiny_ramps", overrides(root, head, **{"linear.features": ("cls", "cls+avg")}))


def test_a_head_for_other_classes_stops_before_any_extraction(setup, tmp_path):
    root, _ = setup
    head = tmp_path / "imagenet_head.pth"
    save_head(head, 2 * WIDTH, classes=1000)
    with pytest.raises(UserInputError, match="has 1000 classes"):
        frozen.run_linear("linear_tiny_ramps", overrides(root, head, **{"features.cache_dir": tmp_path / "cache"}))
    assert not (tmp_path / "cache").exists()
