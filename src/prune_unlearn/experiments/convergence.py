"""Figures 4 and 5: Algorithm 1's convergence (A_u after each round) against K and against |D_U|."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from ..core.models import default_architecture
from ..unlearn.forget import forget
from .datasets import load_dataset
from .reporting import machine_description, mean_std
from .training import recipe_for, train_from_spec


def run_convergence(dataset: str, out_dir: str | Path, *, vary: str, values, fixed: int, data_dir=None,
                    seeds: int = 1, bound: str = "box", epochs: int | None = None, max_rounds: int = 10,
                    log=print) -> dict:
    """Figures 4 and 5: A_u after each round of Algorithm 1, varying K (``vary="K"``, |D_U| = ``fixed``)
    or |D_U| (``vary="n"``, K = ``fixed``). Stragglers are not patched per point (``delta`` < 1 would
    stop early; we run the rounds out to show convergence)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(dataset, data_dir)
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes, ds.input_shape)
    curves = []
    for seed in range(seeds):
        recipe = recipe_for(ds.name, seed=seed, epochs=epochs)
        base = train_from_spec(spec, ds.X_train, ds.y_train, recipe).model
        perm = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(seed))
        for v in values:
            n, k = (fixed, v) if vary == "K" else (v, fixed)
            idx = perm[:n]
            res = forget(base, ds.X_train[idx], labels=ds.y_train[idx], strategy="cluster", n_clusters=k,
                         bound=bound, seed=seed, max_rounds=max_rounds, delta=1.0, radius=None)
            rounds = [r for r in res.report.rounds if "fallback" not in r]
            curves.append({"seed": seed, "n": n, "K": k, "A_u": [r["A_u"] for r in rounds],
                           "seconds": [r["seconds"] for r in rounds],
                           "stragglers_patched_per_point": sum(r["new_regions"] for r in res.report.rounds
                                                               if "fallback" in r)})
            log(f"[seed {seed}] |D_U|={n} K={k}: A_u per round {[round(a, 3) for a in curves[-1]['A_u']]}")
    fig_name = "fig4" if vary == "K" else "fig5"
    result = {"dataset": ds.name, "vary": vary, "fixed": fixed, "values": list(values), "bound": bound,
              "machine": machine_description(), "curves": curves}
    (out / f"{fig_name}-{ds.name}.json").write_text(json.dumps(result, indent=1))
    _plot_convergence(result, out / f"{fig_name}-{ds.name}.png")
    lines = [f"## {'Figure 4' if vary == 'K' else 'Figure 5'} — {ds.name}: A_u (%) after each round of Algorithm 1 "
             f"({'|D_U|' if vary == 'K' else 'K'} = {fixed}, bound = {bound})", "",
             f"| {vary} | " + " | ".join(f"round {i}" for i in range(max_rounds + 1)) + " |",
             "|---|" + "---|" * (max_rounds + 1)]
    for v in values:
        sel = [c for c in curves if (c["K"] if vary == "K" else c["n"]) == v]
        length = max(len(c["A_u"]) for c in sel)
        cells = []
        for i in range(max_rounds + 1):
            vals = [100 * (c["A_u"][i] if i < len(c["A_u"]) else c["A_u"][-1]) for c in sel]
            cells.append(mean_std(vals) if i < length else "")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    (out / f"{fig_name}-{ds.name}.md").write_text("\n".join(lines) + "\n")
    return result


def _plot_convergence(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    key = "K" if result["vary"] == "K" else "n"
    for v in result["values"]:
        sel = [c for c in result["curves"] if c[key] == v]
        length = max(len(c["A_u"]) for c in sel)
        mean = [statistics.mean(100 * (c["A_u"][i] if i < len(c["A_u"]) else c["A_u"][-1]) for c in sel)
                for i in range(length)]
        ax.plot(range(length), mean, marker="o", label=f"{'K' if key == 'K' else '|D_U|'} = {v}")
    ax.set_xlabel("round of Algorithm 1")
    ax.set_ylabel("A_u (%)")
    ax.set_title(f"{result['dataset']}: convergence")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
