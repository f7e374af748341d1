"""Does bfloat16 autocast cost CIFAR-10 accuracy? The same short training in float32 and in bf16, compared.

Both runs use the ``cifar10`` recipe (same seed, same data order and augmentation) on a stratified subset
of the training images, differ only in ``bf16``, and are evaluated in float32 on the whole test set.

    PRUNE_DATA_DIR=../shared/data python benchmarks/cifar_bf16_check.py --per-class 1000 --epochs 4 \\
        --out results/cifar10/bf16-check.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from prune_unlearn import load_dataset
from prune_unlearn.core.models import default_architecture
from prune_unlearn.experiments.training import recipe_for, train_from_spec, width_for
from prune_unlearn.unlearn.metrics import accuracy, predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--width", type=float, default=width_for("cifar10"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("cifar10", args.data_dir)
    gen = torch.Generator().manual_seed(0)
    idx = torch.cat([torch.nonzero(ds.y_train == c).flatten()[torch.randperm(5000, generator=gen)[: args.per_class]]
                     for c in range(10)])
    spec = default_architecture("cifar10", ds.input_dim, 10, ds.input_shape, width=args.width)
    rows = []
    for bf16 in (False, True):
        recipe = recipe_for("cifar10", epochs=args.epochs, bf16=bf16)
        start, cpu = time.perf_counter(), time.process_time()
        model = train_from_spec(spec, ds.X_train[idx], ds.y_train[idx], recipe).model
        row = {"bf16": bf16, "test_accuracy": accuracy(predict(model, ds.X_test, batch_size=1000), ds.y_test),
               "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
               "load_1min": os.getloadavg()[0], "recipe": recipe.to_dict()}
        rows.append(row)
        print(f"bf16={bf16}: test accuracy {100 * row['test_accuracy']:.2f}%, {row['seconds']:.0f} s "
              f"({row['cpu_seconds']:.0f} CPU-s, load {row['load_1min']:.1f})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"train_images": len(idx), "threads": args.threads, "rows": rows},
                                             indent=1))


if __name__ == "__main__":
    main()
