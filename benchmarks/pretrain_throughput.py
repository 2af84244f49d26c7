"""Training-step throughput of our DropPos step against a reference step written the way the authors' code runs.

    python benchmarks/pretrain_throughput.py --size base --batch 64 128 256            # cuda: bf16, MFU
    python benchmarks/pretrain_throughput.py --size tiny --batch 8 32 --steps 3        # CPU: fp32

One step is forward + backward + AdamW on the same model object and optimizer. The reference differs from ours
only in the implementation choices of the public code: fp32, the position mask token repeated to
[B, 37 * B, D] (sized by a host-synced count) and placed by boolean indexing, `.item()` of the loss and the
accuracy plus `cuda.synchronize()` every step. Before timing, both compute the loss on the same masks in fp32
and must agree. Prints the best images/s of each over alternating rounds, the ratio ours / reference, and on
cuda the model FLOPs utilisation against the GPU's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import contextlib
import math
from functools import partial

import torch
import torch.nn.functional as F

from backbone import build_vit
from benchmarks.timing import Step, best_rates, hardware, peak_flops, report_host_syncs, step_flops, step_parser
from pretrain import MAE, DropPos, position_loss, position_smoothing

SIGMA = 1.0  # the paper's sigma0; the table's values do not change the cost


def reference_loss(model: DropPos, images: torch.Tensor, smoothing: torch.Tensor,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Our model's loss computed as the public code computes it: fp32, mask token via repeat + boolean indexing."""
    ids_visible, dropped = model.mask(images.shape[0], model.mask_ratio, model.pos_mask_ratio, images.device,
                                      generator)
    x = model.patch_embed(images).flatten(1, 2)
    batch, dim = x.shape[0], x.shape[-1]
    index = ids_visible.unsqueeze(-1).expand(-1, -1, dim)
    pos = model.pos_embed[:, 1:].expand(batch, -1, -1).gather(1, index).clone()
    num_dropped = int(dropped.sum())  # host sync; the repeat below is [B, 37 * B, D]: memory grows with B^2
    mask_tokens = model.mask_pos_token.repeat(batch, num_dropped, 1)
    pos[dropped] = mask_tokens.reshape(-1, dim)[:num_dropped]
    logits = model.decode(model.encode_patches(x.gather(1, index) + pos))
    weights = dropped.float()
    if model.tau is not None:
        with torch.no_grad():
            tokens = model.forward_tokens(images)
            tokens = F.normalize(tokens, dim=-1)
            affinity = torch.einsum("bd,bnd->bn", tokens[:, 0], tokens[:, 1:]).div(model.tau).softmax(dim=-1)
            attentive = affinity.gather(1, ids_visible)
            weights = weights * attentive / attentive.sum(dim=1, keepdim=True)
    return position_loss(logits, ids_visible, weights, smoothing)


def reference_step(model: DropPos, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                   smoothing: torch.Tensor) -> tuple[float, float]:
    """One fp32 training step with the public code's per-step `.item()` and `cuda.synchronize()`."""
    out = reference_loss(model, images, smoothing)
    out["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss, acc = out["loss"].item(), out["position_acc"].item()
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return loss, acc


def our_step(model: DropPos, optimizer: torch.optim.Optimizer, images: torch.Tensor, smoothing: torch.Tensor,
             amp: bool) -> None:
    """One training step as our pre-training runs it: optional bf16 autocast, no host sync."""
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with autocast:
        out = model(images, smoothing)
    out["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def mae_step(model: MAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, amp: bool) -> None:
    """One MAE training step as our pre-training runs it (the baseline DropPos is compared with)."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = model(images)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def check_reference(model: DropPos, images: torch.Tensor, smoothing: torch.Tensor) -> None:
    """Both losses and accuracies on identical masks in fp32 must agree, or the comparison is not honest."""
    ours = model(images, smoothing, torch.Generator(images.device).manual_seed(0))
    ref = reference_loss(model, images, smoothing, torch.Generator(images.device).manual_seed(0))
    torch.testing.assert_close(torch.stack([ref["loss"], ref["position_acc"]]).detach(),
                               torch.stack([ours["loss"], ours["position_acc"]]).detach(), rtol=1e-4, atol=1e-6,
                               msg=lambda m: f"reference step disagrees with ours (loss, acc): {m}")


def parse_args() -> argparse.Namespace:
    parser = step_parser(__doc__, default_batch=64, default_steps=5)
    parser.add_argument("--tau", type=float, default=0.1, help="attentive reconstruction temperature; inf: off")
    parser.add_argument("--mae", action="store_true", help="also time MAE's step (ours) at each batch")
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s for the MFU (default: table)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    amp = device.type == "cuda" if args.amp is None else args.amp
    torch.manual_seed(0)
    depth = {} if args.depth is None else {"depth": args.depth}
    model = build_vit(args.size, model_class=DropPos, img_size=args.img_size, tau=args.tau, **depth).to(device)
    model.train()
    smoothing = position_smoothing("paper", model.grid_size, args.img_size, SIGMA).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.5e-4,
                                  betas=(0.9, 0.95), weight_decay=0.05)
    images = torch.randn(min(args.batch), 3, args.img_size, args.img_size, device=device)
    check_reference(model, images, smoothing)
    peak = peak_flops(device, args.peak_tflops)
    # FLOPs are linear in the batch: count once, on the eager step (before compiling)
    flops_per_image = step_flops(lambda: our_step(model, optimizer, images, smoothing, amp)) / images.shape[0]
    if args.compile:  # static shapes: one graph per batch size (a symbolic batch breaks the masking's rand)
        model.compile(dynamic=False)

    mode = ("bf16" if amp else "fp32") + (" compiled" if args.compile else "")
    tau = "off" if model.tau is None else f"tau {model.tau:g}"
    print(f"DropPos ViT-{args.size}/{model.patch_embed.patch_size[0]} depth {model.num_layers}, "
          f"{args.img_size} px, attentive {tau}; ours {mode} vs reference fp32; {hardware(device)}")
    print("  reference loss == ours on identical masks (fp32): ok")
    header = f"  {'batch':>5} {'ours img/s':>11} {'ref img/s':>10} {'ours/ref':>8} {'GFLOP/img':>10}"
    print(header + (f" {'MFU ours':>8} {'MFU ref':>8}" if peak else ""))
    for batch in args.batch:
        images = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
        steps: dict[str, Step] = {
            "ours": lambda images=images: our_step(model, optimizer, images, smoothing, amp),
            "reference": lambda images=images: reference_step(model, optimizer, images, smoothing),
        }
        rates = best_rates(steps, batch, args.rounds, args.steps, device)
        optimizer.zero_grad(set_to_none=True)
        ref = f"{rates['reference']:10.1f}" if rates["reference"] else f"{'OOM':>10}"
        ratio = rates["ours"] / rates["reference"] if rates["reference"] else math.nan
        line = f"  {batch:>5} {rates['ours']:11.1f} {ref} {ratio:8.3f} {flops_per_image / 1e9:10.2f}"
        if peak:
            line += "".join(f" {flops_per_image * rates[n] / peak:8.1%}" for n in ("ours", "reference"))
        print(line, flush=True)
    if args.sync_check:
        report_host_syncs("our DropPos step", steps["ours"], device)
    if args.mae:
        time_mae(args, device, amp, peak)
    if device.type == "cpu":
        print("  (on cpu the counter misses scaled_dot_product_attention; GFLOP/img counts the linear layers)")


def time_mae(args: argparse.Namespace, device: torch.device, amp: bool, peak: float | None) -> None:
    """MAE's step (same encoder, its 8-block pixel decoder) at each batch: images/s and MFU."""
    torch.manual_seed(0)
    depth = {} if args.depth is None else {"depth": args.depth}
    model = build_vit(args.size, model_class=MAE, img_size=args.img_size, **depth).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    images = torch.randn(min(args.batch), 3, args.img_size, args.img_size, device=device)
    flops_per_image = step_flops(lambda: mae_step(model, optimizer, images, amp)) / images.shape[0]
    if args.compile:
        model.compile(dynamic=False)
    print(f"  MAE step, same encoder: {'batch':>5} {'img/s':>8} {'GFLOP/img':>10}" + (f" {'MFU':>6}" if peak else ""))
    for batch in args.batch:
        images = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
        step = partial(mae_step, model, optimizer, images, amp)
        rate = best_rates({"mae": step}, batch, args.rounds, args.steps, device)["mae"]
        line = f"  {'':22}{batch:>5} {rate:8.1f} {flops_per_image / 1e9:10.2f}"
        print(line + (f" {flops_per_image * rate / peak:6.1%}" if peak else ""), flush=True)
    if args.sync_check:
        report_host_syncs("our MAE step", step, device)


if __name__ == "__main__":
    main()
