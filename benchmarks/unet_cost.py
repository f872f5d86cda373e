"""What a reconstruction network costs per image on this machine's CPU, to choose sizes and widths.

For the original project's U-Net (width 64, 1 channel) at 128, 256 and 512 px, the same at widths
32 and 16, and the bottleneck autoencoder at 128 px: parameters, multiply-accumulates per image
(counted, so machine-independent), and measured milliseconds per image for a forward pass alone
(eval, no grad) and for forward + backward (train mode, MSE loss), on a batch of random images.

    python benchmarks/unet_cost.py                 # the full table (about 10 minutes on 2 cores)
    python benchmarks/unet_cost.py --sizes 128 --widths 16

Below 256 px: batch 4, best of 2 after a warm-up; 256 px: batch 4, timed once; 512 px: batch 1,
timed once. On a shared machine the timings are upper bounds; the MAC counts are exact.
"""

from __future__ import annotations

import argparse
import os
import time

# Threads that spin while waiting make 2-thread torch 3-4x slower than 1 thread on a busy CPU;
# passive waiting fixes it. Must be set before torch (and its OpenMP runtime) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F
from torch import nn

from anomaly.models import ConvAE, UNet


def count_macs(model: nn.Module, size: int, channels: int) -> float:
    """Multiply-accumulates of the convolutions for one image (the bulk of the cost)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):  # every input pixel meets the whole kernel
            k = module.weight[0].numel()  # out/groups * kh * kw
            total += inputs[0].numel() * k
        else:
            k = module.weight[0].numel()  # in/groups * kh * kw
            total += output.numel() * k

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    with torch.no_grad():
        model.eval()(torch.rand(1, channels, size, size))
    for h in handles:
        h.remove()
    return float(total)


def time_ms(fn, repeats: int, warmup: bool = True) -> float:
    """Best of `repeats` timings, after one warm-up call if asked, in milliseconds (best = least
    disturbed by other processes sharing the CPU)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def measure(
    model: nn.Module, size: int, batch: int, repeats: int, warmup: bool = True, channels: int = 1
) -> dict:
    x = torch.rand(batch, channels, size, size)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)

    @torch.no_grad()
    def forward():
        model.eval()
        model(x)

    def forward_backward():
        model.train()
        out = model(x)
        loss = F.mse_loss(out[0] if isinstance(out, tuple) else out, x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return {
        "params": sum(p.numel() for p in model.parameters()),
        "gmac": count_macs(model, size, channels) / 1e9,
        "fwd": time_ms(forward, repeats, warmup) / batch,
        "train": time_ms(forward_backward, repeats, warmup) / batch,
    }


def schedule(size: int, batch: int, repeats: int) -> tuple[int, int, bool]:
    """(batch, repeats, warm-up) for a size: big images are slow enough to time once, and 512 px
    runs one image at a time to keep memory to a couple of GB (per-image cost barely depends on
    the batch on a CPU)."""
    if size >= 512:
        return 1, 1, False
    if size >= 256:
        return batch, 1, False
    return batch, repeats, True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 32, 16])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (best of) below 256 px")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for width in args.widths:
        for size in args.sizes:
            rows.append((f"UNet w{width}", size, lambda w=width: UNet(in_channels=1, width=w)))
    for size in [s for s in args.sizes if s <= 128] or args.sizes[:1]:
        rows.append(("ConvAE w32 l64", size, lambda: ConvAE(in_channels=1, width=32, latent=64)))

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    header = (
        f"{'model':<16}{'px':>5}{'batch':>6}{'params':>11}{'GMAC/img':>10}"
        f"{'fwd ms/img':>12}{'fwd+bwd ms/img':>16}{'GMAC/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, size, build in rows:
        batch, repeats, warmup = schedule(size, args.batch, args.repeats)
        r = measure(build(), size, batch, repeats, warmup)
        rate = 3 * r["gmac"] / (r["train"] / 1000)  # backward costs about twice the forward
        print(
            f"{name:<16}{size:>5}{batch:>6}{r['params']:>11,}{r['gmac']:>10.2f}"
            f"{r['fwd']:>12.1f}{r['train']:>16.1f}{rate:>8.1f}",
            flush=True,
        )
    print(
        f"load average at the end {os.getloadavg()[0]:.1f}; GMAC/s = effective training rate "
        "(3 x forward MACs / fwd+bwd time)"
    )


if __name__ == "__main__":
    main()
