"""Training throughput of the VGG16 layout on this CPU: images/s per width, thread count, memory format, dtype.

One training step = forward, cross-entropy, backward and an SGD step on a batch of random 32×32 images
(throughput does not depend on the pixel values). Each configuration runs ``--warmup`` steps, then is
timed over ``--steps`` steps; the median step time gives images/s (wall clock), and the process CPU time
gives images per CPU-second: with one thread that is what the configuration achieves on an idle core even
when other work shares the machine (the wall-clock rate then falls with the load, not with the code). The
table picks the width and epoch count of the CIFAR-10 recipe (docs/benchmarks.md).

    python benchmarks/cifar_throughput.py --widths 1 0.5 0.25 --threads 2 --out results/cifar10/throughput.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from prune_unlearn.core.models import vgg16


def conv_macs(model: nn.Module, input_size: int = 32) -> int:
    """Multiply-adds of one forward pass (conv and linear layers), counted from the layer shapes."""
    macs, size = 0, input_size
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            macs += m.in_channels * m.out_channels * 9 * size * size
        elif isinstance(m, nn.MaxPool2d):
            size //= 2
    macs += sum(m.in_features * m.out_features for m in model.classifier if isinstance(m, nn.Linear))
    return macs


def time_steps(width: float, batch: int, channels_last: bool, bf16: bool, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = vgg16(width=width)
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train()
    times, cpu = [], 0.0
    for i in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu += time.process_time() - cpu_start
    step = statistics.median(times)
    return {"width": width, "batch": batch, "channels_last": channels_last, "bf16_autocast": bf16,
            "threads": torch.get_num_threads(), "step_seconds": step, "images_per_second": batch / step,
            "images_per_cpu_second": batch * steps / cpu,
            "gmacs_per_image": conv_macs(model) / 1e9, "params": sum(p.numel() for p in model.parameters()),
            "epoch_minutes_50k": 50_000 / (batch / step) / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5, 0.375, 0.25])
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--formats", nargs="+", default=["contiguous", "channels_last"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--out", default=None, help="append the rows to this JSON file")
    args = ap.parse_args()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for width in args.widths:
            for fmt in args.formats:
                for dt in args.dtypes:
                    load = os.getloadavg()[0]
                    row = time_steps(width, args.batch, fmt == "channels_last", dt == "bf16", args.steps,
                                     args.warmup)
                    row["load_1min_before"] = load
                    rows.append(row)
                    print(f"width {width:5.3f} threads {threads} {fmt:13s} {dt}: {row['images_per_second']:7.1f} img/s, "
                          f"{row['images_per_cpu_second']:7.1f} img/CPU-s "
                          f"({row['epoch_minutes_50k']:.1f} min/epoch, {row['gmacs_per_image']:.3f} GMAC/img, "
                          f"load {load:.2f})", flush=True)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(old + rows, indent=1))


if __name__ == "__main__":
    main()
