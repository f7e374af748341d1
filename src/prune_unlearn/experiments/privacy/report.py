"""Writes the privacy table: JSON (everything), CSV (one flat row per method), Markdown (metrics × methods)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

__all__ = ["write_privacy_report", "flatten"]


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as one level with dotted keys (for CSV)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _auc(v) -> str:
    return f"{v:.3f}"


def _lines(result: dict) -> list[str]:
    rows = {r["method"]: r for r in result["rows"]}
    names = sorted(rows, key=lambda m: m != "retrain")  # the reference first
    des = result["design"]
    n_u, n_pop, n_cand = des["n_forget"], des["n_unseen_population"], des["n_unseen_candidates"]
    n_rem = des["n_remaining"]

    def table(title: str, note: str, metrics: list) -> list[str]:
        lines = ["", f"### {title}", "", note, "", "| metric | " + " | ".join(names) + " |",
                 "|---|" + "---|" * len(names)]
        for label, get in metrics:
            lines.append(f"| {label} | " + " | ".join(get(rows[m]) for m in names) + " |")
        return lines

    def fp(n_neg, rate):  # the number of false positives a rate allows
        return int(rate * n_neg + 1e-9)

    out = [f"## Privacy — {result['dataset']}: attacks after withdrawing {n_u} random training points",
           "", f"FC model, full training set ({des['n_train']} points), seed {result['config']['seed']}, "
           f"{des['n_shadows']} shadow worlds (each candidate IN in {des['in_per_candidate']} of them). Retrain "
           f"is the reference: a method is as private as retraining when its numbers match Retrain's column. "
           f"Wall time {result['seconds'] / 60:.1f} min, torch threads {result['machine']['torch_threads']}, "
           f"load average {result['machine']['load_average_start'][0]:.1f} → "
           f"{result['machine']['load_average_end'][0]:.1f}."]
    out += table("Accuracy and cost", "Accuracies in %; changed = predictions that differ before/after.", [
        ("A_u-b → A_u-a", lambda r: f"{100 * r['A_u_b']:.1f} → {100 * r['A_u_a']:.1f}"),
        ("A_tes after", lambda r: f"{100 * r['A_tes']:.2f}"),
        ("A_res after", lambda r: f"{100 * r['A_res']:.2f}"),
        ("changed test / remaining", lambda r: f"{r['changed_tes']} / {r['changed_res']}"),
        ("unlearning seconds", lambda r: f"{r['unlearn_seconds']:.2f}"),
    ])
    pop = lambda s, k: (lambda r: r["population"][s][k])  # noqa: E731
    out += table(f"Population attacks: {n_u} forgotten vs {n_pop} unseen test points",
                 f"AUC with the member direction (higher score = member; below 0.5: the forgotten points look *less* "
                 f"like members than unseen ones). TPR at 1% FPR allows {fp(n_pop, .01)} false positives, at 0.1% "
                 f"{fp(n_pop, .001)}; 'best direction' is an attacker who knows which way the method moves them.", [
                     *[(f"{s} AUC", lambda r, s=s: _auc(pop(s, "auc")(r))) for s in ("loss", "confidence", "margin")],
                     ("loss TPR @1% / @0.1% FPR", lambda r: f"{_pct(pop('loss', 'tpr')(r)['0.01'])} / "
                                                            f"{_pct(pop('loss', 'tpr')(r)['0.001'])}"),
                     ("loss TPR @1% / @0.1%, best direction", lambda r: f"{_pct(pop('loss', 'tpr_best')(r)['0.01'])} / "
                                                                       f"{_pct(pop('loss', 'tpr_best')(r)['0.001'])}"),
                     ("margin TPR @1% FPR, best direction", lambda r: _pct(pop("margin", "tpr_best")(r)["0.01"])),
                     ("Yeom recall / FPR", lambda r: f"{_pct(r['yeom']['recall'])} / "
                                                     f"{_pct(r['yeom']['false_positive_rate'])}"),
                 ])
    lira = lambda key, v: (lambda r: r[key][v])  # noqa: E731
    out += table(f"U-LiRA: {n_u} forgotten vs {n_cand} unseen candidates",
                 f"Per-example likelihood ratio on the logit-scaled confidence, Gaussians fitted on the shadows "
                 f"({result['config']['variance']} variance). TPR at 1% FPR allows {fp(n_cand, .01)} false positives, "
                 f"at 0.1% {fp(n_cand, .001)}. 'LiRA before' attacks the model before unlearning: how identifiable "
                 f"the points were to begin with.", [
                     ("U-LiRA online AUC", lambda r: _auc(lira("ulira", "online")(r)["auc"])),
                     ("U-LiRA online TPR @1% / @0.1%", lambda r: f"{_pct(lira('ulira', 'online')(r)['tpr']['0.01'])} / "
                                                                 f"{_pct(lira('ulira', 'online')(r)['tpr']['0.001'])}"),
                     ("U-LiRA offline AUC", lambda r: _auc(lira("ulira", "offline")(r)["auc"])),
                     ("U-LiRA offline TPR @1%", lambda r: _pct(lira("ulira", "offline")(r)["tpr"]["0.01"])),
                     ("LiRA before, online AUC", lambda r: _auc(lira("lira_before", "online")(r)["auc"])),
                     ("LiRA before, TPR @1%", lambda r: _pct(lira("lira_before", "online")(r)["tpr"]["0.01"])),
                 ])
    diff = lambda where, s: (lambda r: r["difference"][where][s])  # noqa: E731
    for where, n_neg, what in (("remaining", n_rem, "remaining training points"), ("unseen", n_pop, "unseen test points")):
        out += table(f"Model difference: {n_u} forgotten among {n_neg} {what}",
                     f"Attacker with the model before and after. Precision at k = {n_u}: share of forgotten points "
                     f"among the {n_u} largest changes. TPR at 1% FPR allows {fp(n_neg, .01)} false positives.", [
                         *[(f"{s} AUC", lambda r, s=s: _auc(diff(where, s)(r)["auc"]))
                           for s in ("loss_increase", "posterior_shift")],
                         ("loss_increase TPR @1% / @0.1%", lambda r: f"{_pct(diff(where, 'loss_increase')(r)['tpr']['0.01'])} / "
                                                                     f"{_pct(diff(where, 'loss_increase')(r)['tpr']['0.001'])}"),
                         *[(f"{s} precision @{n_u}", lambda r, s=s: _pct(diff(where, s)(r)["precision_at_k"]))
                           for s in ("loss_increase", "posterior_shift")],
                     ])
    learned = lambda r: r["difference_learned"]  # noqa: E731
    out += table(f"Model difference, learned (Chen et al.): {n_u} forgotten vs {n_cand} unseen candidates",
                 "A random forest trained on the shadow worlds' pairs of models (features of both output vectors) "
                 f"scores the target's pair. TPR at 1% FPR allows {fp(n_cand, .01)} false positives.", [
                     ("AUC", lambda r: _auc(learned(r)["auc"])),
                     ("TPR @1% / @0.1%", lambda r: f"{_pct(learned(r)['tpr']['0.01'])} / "
                                                   f"{_pct(learned(r)['tpr']['0.001'])}"),
                     (f"precision @{n_u}", lambda r: _pct(learned(r)["precision_at_k"])),
                 ])
    secs = result.get("world_seconds", {})
    med = lambda v: f"{statistics.median(v):.1f}" if v else "–"  # noqa: E731
    cell = lambda m, k: f"{med(secs[m][k])} ({len(secs[m][k])})"  # noqa: E731
    out += ["", "### Cost per world (median seconds over the worlds computed in the run that filled the cache, "
            "with how many)", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for phase in ("train", "unlearn"):
        for unit, what in (("seconds", "wall"), ("cpu_seconds", "CPU")):
            out.append(f"| {phase}ing, {what} | " + " | ".join(cell(m, f"{phase}_{unit}") for m in names) + " |")
    total_cpu = sum(sum(v) for m in names for k, v in secs[m].items() if k.endswith("cpu_seconds"))
    out += ["", "Training counts once per world for the methods that share the plain model (retrain, PRUNE, FU); "
            "Amnesiac's recorded training is that plain training. CPU seconds are the worker process's own "
            f"(one torch thread): {total_cpu / 60:.1f} CPU-minutes in all, i.e. about "
            f"{total_cpu / 60 / max(1, result['machine'].get('workers') or 1):.0f} minutes on "
            f"{result['machine'].get('workers')} idle cores."]
    out += ["", "Methods: " + "; ".join(f"`{k}` — {v}" for k, v in result["methods"].items()) + "."]
    return out


def write_privacy_report(result: dict, out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = result["dataset"]
    (out / f"privacy-{name}.json").write_text(json.dumps(result, indent=1))
    flat = [flatten(r) for r in result["rows"]]
    keys = list(dict.fromkeys(k for r in flat for k in r))
    with open(out / f"privacy-{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(flat)
    (out / f"privacy-{name}.md").write_text("\n".join(_lines(result)) + "\n")
