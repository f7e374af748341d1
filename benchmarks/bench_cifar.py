"""CIFAR-10 / VGG16 end to end: train, forget in feature space, check the guarantees.

On a GPU (``--device auto`` finds one) this trains VGG16 with the authors' recipe on the whole JPEG
copy. On a CPU it runs a reduced configuration and says so in its output: a stratified subset of
the training images, few epochs and a subset of the test set, so that it finishes in minutes.

    python benchmarks/bench_cifar.py --out results/bench            # reduced on CPU, full on GPU
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prune_unlearn import forget, load_dataset
from prune_unlearn.core.domain import data_feature_box
from prune_unlearn.unlearn.metrics import accuracy, predict
from prune_unlearn.experiments.runner import machine_description
from prune_unlearn.core.models import default_architecture
from prune_unlearn.experiments.training import recipe_for, train_from_spec


def stratified(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    idx = [torch.nonzero(y == c).flatten() for c in range(int(y.max()) + 1)]
    return torch.cat([i[torch.randperm(len(i), generator=gen)[:per_class]] for i in idx])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--forget", type=int, default=100)
    ap.add_argument("--train-per-class", type=int, default=None, help="default: all on GPU, 500 on CPU")
    ap.add_argument("--epochs", type=int, default=None, help="default: recipe (GPU) or 4 (CPU)")
    ap.add_argument("--test-size", type=int, default=None, help="default: all on GPU, 2000 on CPU")
    args = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    reduced = device == "cpu"
    ds = load_dataset("cifar10", args.data_dir)
    per_class = args.train_per_class or (500 if reduced else None)
    train_idx = stratified(ds.y_train, per_class, 0) if per_class else torch.arange(len(ds.y_train))
    X, y = ds.X_train[train_idx], ds.y_train[train_idx]
    test_n = args.test_size or (2000 if reduced else len(ds.y_test))
    test_idx = stratified(ds.y_test, test_n // 10, 1) if test_n < len(ds.y_test) else torch.arange(len(ds.y_test))
    Xt, yt = ds.X_test[test_idx], ds.y_test[test_idx]
    spec = default_architecture("cifar10", ds.input_dim, 10, ds.input_shape)
    # The authors' recipe is SGD, momentum 0.5, lr 0.01, 100 epochs. The reduced CPU run keeps SGD with
    # momentum 0.5 but uses lr 0.05 so that a few epochs on a subset learn something.
    recipe = recipe_for("cifar10", epochs=args.epochs or (4 if reduced else 100), lr=0.05 if reduced else 0.01)
    note = ("REDUCED CPU RUN: " if reduced else "") + f"{len(y)} training images, {recipe.epochs} epochs, " \
        f"{len(yt)} test images, device {device}"
    print(note, flush=True)
    t = time.perf_counter()
    model = train_from_spec(spec, X, y, recipe, device=device, progress=False).model.eval()
    train_seconds = time.perf_counter() - t
    acc = accuracy(predict(model, Xt), yt)
    print(f"trained in {train_seconds:.0f} s: test accuracy {100 * acc:.2f}%", flush=True)
    gen = torch.Generator().manual_seed(0)
    forget_idx = torch.randperm(len(y), generator=gen)[: args.forget]
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[forget_idx] = False
    runs = {}
    domains = {"interval propagation (sound for every input in [0,1]^3072)": None,
               "training features ± 10% (claims hold for features in this box)":
                   data_feature_box(model, X.to(device), margin=0.1)}
    for name, fdom in domains.items():
        res = forget(model, X[forget_idx], labels=y[forget_idx], bound="dual", feature_domain=fdom,
                     test_data=(Xt, yt), remaining_data=(X[keep], y[keep]))
        r = res.report
        runs[name] = {k: getattr(r, k) for k in ("n_forget", "n_forgotten", "n_certified_region", "A_u_before",
                                                  "A_u_after", "A_tes_before", "A_tes_after", "A_res_before",
                                                  "A_res_after", "changed_tes", "changed_res", "unlearn_seconds",
                                                  "patch_linf_mean", "patch_linf_max", "n_float32_robust")}
        print(f"[{name}] {r.summary()}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"note": note, "machine": machine_description(), "device": device, "recipe": recipe.to_dict(),
              "train_images": len(y), "test_images": len(yt), "train_seconds": train_seconds,
              "test_accuracy": acc, "runs": runs}
    (out / "cifar10-vgg16.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'cifar10-vgg16.json'}")


if __name__ == "__main__":
    main()
