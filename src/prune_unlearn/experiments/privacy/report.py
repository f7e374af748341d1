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


def _get(row: dict, path: str):
    for part in path.split("/"):
        row = row[part]
    return row


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _auc(path: str):
    """Cell: the AUC of the ROC summary at ``path`` (e.g. ``"population/loss"``)."""
    return lambda r: f"{_get(r, path)['auc']:.3f}"


def _rates(path: str, key: str = "tpr", fprs=("0.01", "0.001")):
    """Cell: TPRs of the ROC summary at ``path`` at the given FPRs, "1.2% / n/a"."""
    return lambda r: " / ".join(_pct(_get(r, path)[key][a]) for a in fprs)


def _pct_at(path: str):
    return lambda r: _pct(_get(r, path))


def _allowed(n_neg: int, rate: float) -> int:
    """False positives a rate allows among ``n_neg`` negatives."""
    return int(rate * n_neg + 1e-9)


def _reference_note(config: dict) -> str:
    """How the references were trained and calibrated, where not the defaults."""
    note = " (each as many SGD steps as the plain model)" if config.get("reference_steps") == "matched" else ""
    if config.get("reference_calibration") == "affine":
        note += ", prune-unseen-cal with an affine logit calibration"
    return note


def _header(result: dict) -> list[str]:
    des, machine = result["design"], result["machine"]
    return [f"## Privacy — {result['dataset']}: attacks after withdrawing {des['n_forget']} random training points",
            "", f"FC model, full training set ({des['n_train']} points), seed {result['config']['seed']}, "
            f"{result.get('epochs', '?')} training epochs (every model), "
            f"{result['config'].get('folds', 2)}-fold references for prune-unseen{_reference_note(result['config'])}, "
            f"{des['n_shadows']} shadow worlds (each candidate IN in {des['in_per_candidate']} of them), "
            f"{des.get('n_calibration', 0)} unseen test points held out for calibration (never attacked). Retrain is "
            f"the reference: a method is as private as retraining when its numbers match Retrain's column. Wall time "
            f"{result['seconds'] / 60:.1f} min, {machine.get('workers')} workers × {machine['torch_threads']} torch "
            f"thread(s), load average {machine['load_average_start'][0]:.1f} → {machine['load_average_end'][0]:.1f}."]


def _sections(result: dict) -> list[tuple[str, str, list]]:
    des = result["design"]
    n_u, n_pop, n_cand, n_rem = (des["n_forget"], des["n_unseen_population"], des["n_unseen_candidates"],
                                 des["n_remaining"])
    sections = [
        ("Accuracy", "Accuracies in %; changed = predictions that differ before/after.", [
            ("A_u-b → A_u-a", lambda r: f"{100 * r['A_u_b']:.1f} → {100 * r['A_u_a']:.1f}"),
            ("A_tes after", lambda r: f"{100 * r['A_tes']:.2f}"),
            ("A_res after", lambda r: f"{100 * r['A_res']:.2f}"),
            ("changed test / remaining", lambda r: f"{r['changed_tes']} / {r['changed_res']}")]),
        (f"Population attacks: {n_u} forgotten vs {n_pop} unseen test points",
         f"AUC with the member direction (higher score = member; below 0.5: the forgotten points look *less* like "
         f"members than unseen ones). TPR at 1% FPR allows {_allowed(n_pop, .01)} false positives, at 0.1% "
         f"{_allowed(n_pop, .001)}; 'best direction' is an attacker who knows which way the method moves them.", [
             *[(f"{s} AUC", _auc(f"population/{s}")) for s in ("loss", "confidence", "margin")],
             ("loss TPR @1% / @0.1% FPR", _rates("population/loss")),
             ("loss TPR @1% / @0.1%, best direction", _rates("population/loss", "tpr_best")),
             ("margin TPR @1% / @0.1%, best direction", _rates("population/margin", "tpr_best")),
             ("Yeom recall / FPR", lambda r: f"{_pct(r['yeom']['recall'])} / {_pct(r['yeom']['false_positive_rate'])}"),
         ]),
        (f"U-LiRA: {n_u} forgotten vs {n_cand} unseen candidates",
         f"Per-example likelihood ratio on the logit-scaled confidence, Gaussians fitted on the shadows "
         f"({result['config']['variance']} variance). TPR at 1% FPR allows {_allowed(n_cand, .01)} false positives, "
         f"at 0.1% {_allowed(n_cand, .001)}. 'LiRA before' attacks the models before the withdrawal: how "
         f"identifiable the points were to begin with.", [
             ("U-LiRA online AUC", _auc("ulira/online")),
             ("U-LiRA online TPR @1% / @0.1%", _rates("ulira/online")),
             ("U-LiRA offline AUC", _auc("ulira/offline")),
             ("U-LiRA offline TPR @1% / @0.1%", _rates("ulira/offline")),
             ("LiRA before, online AUC", _auc("lira_before/online")),
             ("LiRA before, TPR @1% / @0.1%", _rates("lira_before/online")),
         ]),
    ]
    for where, n_neg, what in (("remaining", n_rem, "remaining training points"),
                               ("unseen", n_pop, "unseen test points")):
        sections.append((
            f"Model difference: {n_u} forgotten among {n_neg} {what}",
            f"Attacker with the model before and after. Precision at k = {n_u}: share of forgotten points among the "
            f"{n_u} largest changes. TPR at 1% FPR allows {_allowed(n_neg, .01)} false positives, at 0.1% "
            f"{_allowed(n_neg, .001)}.", [
                *[(f"{s} AUC", _auc(f"difference/{where}/{s}")) for s in ("loss_increase", "posterior_shift")],
                ("loss_increase TPR @1% / @0.1%", _rates(f"difference/{where}/loss_increase")),
                *[(f"{s} precision @{n_u}", _pct_at(f"difference/{where}/{s}/precision_at_k"))
                  for s in ("loss_increase", "posterior_shift")],
            ]))
    sections.append((
        f"Model difference, learned (Chen et al.): {n_u} forgotten vs {n_cand} unseen candidates",
        "A random forest trained on the shadow worlds' pairs of models (features of both output vectors) scores "
        f"the target's pair. TPR at 1% FPR allows {_allowed(n_cand, .01)} false positives.", [
            ("AUC", _auc("difference_learned")),
            ("TPR @1% / @0.1%", _rates("difference_learned")),
            (f"precision @{n_u}", _pct_at("difference_learned/precision_at_k")),
        ]))
    return sections


def _cost(result: dict, names: list) -> list[str]:
    secs = result.get("world_seconds", {})
    med = lambda v: f"{statistics.median(v):.1f} ({len(v)})" if v else "–"  # noqa: E731
    lines = ["", "### Cost per world (median seconds over the worlds computed in the run that filled the cache, "
             "with how many)", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for phase in ("train", "unlearn"):
        for unit, what in (("seconds", "wall"), ("cpu_seconds", "CPU")):
            lines.append(f"| {phase}ing, {what} | " + " | ".join(med(secs[m][f"{phase}_{unit}"]) for m in names) + " |")
    total_cpu = sum(sum(v) for m in names for k, v in secs[m].items() if k.endswith("cpu_seconds"))
    workers = result["machine"].get("workers") or 1
    lines += ["", "Training counts once per world for the methods that share the plain model (retrain, PRUNE, FU); "
              "Amnesiac's recorded training is that plain training; prune-unseen's is its K-fold references alone "
              "(prune-unseen-cal shares them). CPU seconds are the worker process's own "
              f"(one torch thread): {total_cpu / 60:.1f} CPU-minutes in all (worlds with CPU times), about "
              f"{total_cpu / 60 / workers:.0f} minutes on {workers} idle cores."]
    return lines


def _lines(result: dict) -> list[str]:
    rows = {r["method"]: r for r in result["rows"]}
    names = sorted(rows, key=lambda m: m != "retrain")  # the reference first
    out = _header(result)
    for title, note, metrics in _sections(result):
        out += ["", f"### {title}", "", note, "", "| metric | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names)]
        out += [f"| {label} | " + " | ".join(cell(rows[m]) for m in names) + " |" for label, cell in metrics]
    out += _cost(result, names)
    out += ["", "Methods: " + "; ".join(f"`{k}` — {v}" for k, v in result["methods"].items()) + "."]
    return out


def write_privacy_report(result: dict, out: Path) -> None:
    """``privacy-<data>.json``, ``.csv`` and ``.md`` in ``out`` (created if needed)."""
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
