"""FU's step scale τ against forgetting and accuracy (MNIST, |D_U| = 100); the table in docs/results.md.

    PRUNE_DATA_DIR=../shared/data python benchmarks/fu_step_scale.py
"""

import copy

import torch

from prune_unlearn import load_dataset
from prune_unlearn.experiments.baselines import create_baseline
from prune_unlearn.unlearn.metrics import accuracy, predict
from prune_unlearn.core.models import default_architecture
from prune_unlearn.experiments.training import recipe_for

ds = load_dataset("mnist")
spec = default_architecture("mnist", 784, 10)
idx = torch.randperm(60000, generator=torch.Generator().manual_seed(0))[:100]
fu = create_baseline("fu", hessian_samples=5000).fit(spec, ds.X_train, ds.y_train, recipe_for("mnist"))
for tau in (1, 100, 1000, 3000, 10000):
    method = copy.deepcopy(fu).set_params(step_scale=float(tau))
    result = method.forget(idx)
    print(f"tau {tau}: A_tes {accuracy(predict(result.model, ds.X_test), ds.y_test):.4f} "
          f"A_u-a {accuracy(predict(result.model, ds.X_train[idx]), ds.y_train[idx]):.2f} "
          f"|dtheta| {result.info['update_norm']:.3f}", flush=True)
