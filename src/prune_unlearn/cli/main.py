"""The ``prune`` command line: a thin layer over the library (parse, call one function, print).

Exit codes: 0 ok; 1 a refused request (``Error: ...``); 2 usage error.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import torch

from .._version import __version__
from .options import data_options, handle_errors, json_option, read_indices, relaxed_support_options, seed_option
from .options import silent_option

# --- shared option bundles -----------------------------------------------------------------------


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (GPU when present), cpu, cuda, cuda:1, …")(f)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_model_file(path: Path, layers: str | None):
    """A saved prune model (.safetensors), or a user's state dict (.pt/.pth, loaded with weights_only=True)."""
    from ..errors import FormatError, InputValidationError
    from ..core.serialization import load

    if path.suffix == ".safetensors" or layers is None:
        if path.suffix != ".safetensors" and path.exists():
            raise InputValidationError(
                f"{path} is not a .safetensors file from `prune train`. HINT: for a PyTorch state dict of an MLP, "
                "also pass --layers with its layer sizes, e.g. --layers 784,256,256,10.")
        return load(path)
    from ..core.models import mlp_from_state_dict

    try:
        sizes = [int(v) for v in layers.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputValidationError(f"--layers must be comma-separated integers, e.g. 784,256,256,10; got {layers!r}.") from None
    if not path.is_file():
        raise FormatError(f"No model file at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as exc:  # noqa: BLE001 - torch raises several types for foreign files
        raise FormatError(f"{path} is not a PyTorch state dict loadable with weights_only=True: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FormatError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return mlp_from_state_dict(state, sizes)


def forget_options(f):
    f = click.option("--strategy", type=click.Choice(["per-point", "cluster"]), default="per-point",
                     show_default=True, help="per-point: Theorem 1 for every point; cluster: Algorithm 1.")(f)
    f = click.option("--bound", type=click.Choice(["box", "dual", "lp"]), default="box", show_default=True,
                     help="How region claims are proven (all sound; dual/lp give smaller patches).")(f)
    f = click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
                     help="Proven margin (logits) of the target label on each certified region.")(f)
    f = click.option("--target", type=click.Choice(["random", "runner-up"]), default="random", show_default=True,
                     help="Target label rule.")(f)
    f = click.option("--delta", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
                     help="Forgotten share to reach (cluster strategy).")(f)
    f = click.option("--clusters", type=click.IntRange(min=1), default=None,
                     help="K for the cluster strategy (default ceil(n/10)).")(f)
    return f


def _progress(silent: bool, as_json: bool) -> bool:
    return not (silent or as_json)


def _emit(data: dict, as_json: bool, human: str) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=1))
    else:
        click.echo(human)


# --- commands ------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prune")
def cli() -> None:
    """prune-unlearn: make a trained classifier forget chosen training points, with certificates."""


@cli.command()
@data_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the trained model (.safetensors).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the recipe's epochs.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Override the learning rate.")
@seed_option
@device_option
@json_option
@silent_option
@handle_errors
def train(data_name, data_dir, out, epochs, lr, seed, device, as_json, silent):
    """Train the paper's model for a data set with the authors' recipe.

    Example: prune train --data digits --out digits.safetensors
    """
    from ..experiments.datasets import load_dataset
    from ..unlearn.metrics import accuracy, predict
    from ..core.models import default_architecture
    from ..core.serialization import save
    from ..experiments.training import recipe_for, train_from_spec

    ds = load_dataset(data_name, data_dir)
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes, ds.input_shape)
    recipe = recipe_for(ds.name, epochs=epochs, lr=lr, seed=seed)
    dev = resolve_device(device)
    result = train_from_spec(spec, ds.X_train, ds.y_train, recipe, progress=_progress(silent, as_json), device=dev)
    result.model.to("cpu")
    test_acc = accuracy(predict(result.model, ds.X_test), ds.y_test)
    train_acc = accuracy(predict(result.model, ds.X_train), ds.y_train)
    info = {"dataset": ds.name, "recipe": recipe.to_dict(), "seed": seed, "device": dev,
            "train_seconds": result.seconds,
            "test_accuracy": test_acc, "train_accuracy": train_acc, "history": result.history}
    save(result.model, out, info=info)
    _emit({"model": str(out), **info}, as_json,
          f"trained {spec['kind']} on {ds.name} ({dev}) in {result.seconds:.1f} s: "
          f"test accuracy {100 * test_acc:.2f}%, train {100 * train_acc:.2f}% → {out}")


def run_forget_on_dataset(model, ds, idx, *, strategy, bound, epsilon, target, seed, delta, clusters,
                          retrain: bool, progress: bool, recipe=None):
    """Forget training points ``idx`` of ``ds`` and evaluate on test and remaining data."""
    from ..unlearn.forget import forget

    X_rem, y_rem = ds.remaining(idx)
    result = forget(model, ds.X_train[idx], labels=ds.y_train[idx], strategy=strategy, bound=bound,
                    epsilon=epsilon, target=target, seed=seed, delta=delta, n_clusters=clusters,
                    domain=(ds.domain_lower, ds.domain_upper), test_data=(ds.X_test, ds.y_test),
                    remaining_data=(X_rem, y_rem), progress=progress)
    report = result.report
    if retrain:
        from ..core.models import architecture_of
        from ..experiments.training import recipe_for, train_from_spec
        from ..errors import InputValidationError

        spec = architecture_of(model if not hasattr(model, "base") else model.base)
        if spec is None:
            raise InputValidationError("--retrain needs a model built by prune (its architecture is recorded).")
        rec = recipe or recipe_for(ds.name, seed=seed)
        retrained = train_from_spec(spec, X_rem, y_rem, rec, progress=progress)
        report = report.with_retraining(retrained.seconds)
    return result._replace(report=report)


def _write_outputs(out: Path, result, idx, info: dict) -> dict:
    from ..core.serialization import save

    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / "patched.safetensors", "report": out / "report.json",
             "certificate": out / "certificate.json", "indices": out / "forget_indices.txt"}
    save(result.model, paths["model"], info=info)
    result.report.to_json(paths["report"])
    result.certificate.to_json(paths["certificate"])
    from ..core.serialization import atomic_write_text

    atomic_write_text(paths["indices"], "\n".join(str(int(i)) for i in idx) + "\n")
    return {k: str(v) for k, v in paths.items()}


@cli.command(name="forget")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Saved model (.safetensors from `prune train`, or a patched model), or a PyTorch state dict "
                   "of an MLP (.pt) with --layers.")
@click.option("--layers", default=None, help="Layer sizes of an MLP state dict given as --model, e.g. 784,256,256,10.")
@data_options
@click.option("--indices", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Text file with training-set indices to forget (whitespace/comma separated).")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Forget this many random training points (drawn with --seed).")
@forget_options
@seed_option
@click.option("--retrain", is_flag=True, help="Also retrain on the remaining data and report the time ratio.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for patched.safetensors, report.json, certificate.json.")
@json_option
@silent_option
@handle_errors
def forget_cmd(model_path, layers, data_name, data_dir, indices, count, strategy, bound, epsilon, target, delta,
               clusters, seed, retrain, out, as_json, silent):
    """Forget training points of a saved model; write the patched model, report and certificate.

    Example: prune forget --model digits.safetensors --data digits --count 100 --out forgot/
    """
    from ..experiments.datasets import load_dataset

    if (indices is None) == (count is None):
        raise click.UsageError("Use exactly one of --indices or --count.")
    model = load_model_file(model_path, layers)
    ds = load_dataset(data_name, data_dir)
    if indices is not None:
        idx = read_indices(indices, len(ds.y_train))
    else:
        from ..errors import InputValidationError

        if count > len(ds.y_train):
            raise InputValidationError(f"--count {count} exceeds the {len(ds.y_train)} training points.")
        idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(seed))[:count]
    result = run_forget_on_dataset(model, ds, idx, strategy=strategy, bound=bound, epsilon=epsilon, target=target,
                                   seed=seed, delta=delta, clusters=clusters, retrain=retrain,
                                   progress=_progress(silent, as_json))
    info = {"dataset": ds.name, "forget_count": len(idx), "source_model": str(model_path)}
    files = _write_outputs(out, result, idx, info)
    _emit({**result.report.to_dict(), "files": files}, as_json,
          result.report.summary() + f"\nwrote {', '.join(files.values())}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("prune-demo"),
              show_default=True, help="Folder for the outputs.")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True,
              help="Number of random training points to forget.")
@forget_options
@seed_option
@json_option
@silent_option
@handle_errors
def demo(out, count, strategy, bound, epsilon, target, delta, clusters, seed, as_json, silent):
    """Train FC(256×256) on scikit-learn's digits, forget random training points, show the evidence.

    Example: prune demo --out prune-demo
    """
    from ..experiments.datasets import load_dataset
    from ..core.models import default_architecture
    from ..core.serialization import save
    from ..experiments.training import recipe_for, train_from_spec

    t0 = time.perf_counter()
    progress = _progress(silent, as_json)
    ds = load_dataset("digits")
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes)
    recipe = recipe_for(ds.name, seed=seed)
    if not as_json:
        click.echo(f"training FC(256×256) on {ds.name} ({len(ds.y_train)} train / {len(ds.y_test)} test) …", err=True)
    trained = train_from_spec(spec, ds.X_train, ds.y_train, recipe, progress=progress)
    if count > len(ds.y_train):
        raise click.BadParameter(f"at most {len(ds.y_train)}", param_hint="--count")
    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(seed))[:count]
    if not as_json:
        click.echo(f"forgetting {count} random training points, then retraining without them for comparison …",
                   err=True)
    result = run_forget_on_dataset(trained.model, ds, idx, strategy=strategy, bound=bound, epsilon=epsilon,
                                   target=target, seed=seed, delta=delta, clusters=clusters, retrain=True,
                                   progress=progress, recipe=recipe)
    out.mkdir(parents=True, exist_ok=True)
    save(trained.model, out / "model.safetensors", info={"dataset": ds.name, "recipe": recipe.to_dict()})
    files = _write_outputs(out, result, idx, {"dataset": ds.name, "forget_count": count})
    files["base_model"] = str(out / "model.safetensors")
    total = time.perf_counter() - t0
    _emit({**result.report.to_dict(), "files": files, "demo_seconds": total}, as_json,
          result.report.summary() + f"\nwrote {', '.join(files.values())}  (demo took {total:.1f} s)")


@cli.command(name="forget-class")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Saved base model (.safetensors from `prune train`).")
@data_options
@click.option("--label", type=click.IntRange(min=0), required=True, help="The class to forget.")
@relaxed_support_options
@click.option("--radius", type=click.Choice(["per-member", "calibrated"]), default="per-member", show_default=True,
              help="per-member: CROWN bisection per member (Algorithm 2); calibrated: one radius from a sample.")
@click.option("--max-relaxed", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Most CROWN-relaxed supports per round.")
@click.option("--target", default="random", show_default=True, help="'random' or a label to push the class to.")
@click.option("--bound", type=click.Choice(["box", "dual", "lp"]), default="box", show_default=True)
@seed_option
@click.option("--retrain", is_flag=True, help="Also retrain without the class and report the time ratio.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for patched.safetensors, report.json, certificate.json.")
@json_option
@silent_option
@handle_errors
def forget_class_cmd(model_path, data_name, data_dir, label, radius_scale, radius, max_relaxed, intermediate,
                     decision_gate, target, bound, seed, retrain, out, as_json, silent):
    """Forget a whole class (Algorithm 2): CROWN-relaxed supports generalise to unseen class points.

    Example: prune forget-class --model mnist.safetensors --data mnist --label 3 --out forgot-3/
    """
    from ..experiments.datasets import load_dataset
    from ..core.serialization import save
    from ..unlearn.whole_class import forget_class

    model = load_model_file(model_path, None)
    ds = load_dataset(data_name, data_dir)
    tgt = target if target == "random" else int(target) if target.isdigit() else target
    cls = ds.y_train == label
    result = forget_class(model, label, ds.X_train[cls], target=tgt, radius_scale=radius_scale, radius=radius,
                          max_relaxed=max_relaxed, intermediate=intermediate, decision_gate=decision_gate,
                          bound=bound, seed=seed, domain=(ds.domain_lower, ds.domain_upper),
                          train_data=(ds.X_train, ds.y_train), test_data=(ds.X_test, ds.y_test),
                          progress=_progress(silent, as_json))
    report = result.report
    if retrain:
        from ..core.models import architecture_of
        from ..experiments.training import recipe_for, train_from_spec

        spec = architecture_of(model)
        if spec is None:
            from ..errors import InputValidationError

            raise InputValidationError("--retrain needs a model built by prune (its architecture is recorded).")
        report = report.with_retraining(train_from_spec(spec, ds.X_train[~cls], ds.y_train[~cls],
                                                        recipe_for(ds.name, seed=seed)).seconds)
    out.mkdir(parents=True, exist_ok=True)
    save(result.model, out / "patched.safetensors", info={"dataset": ds.name, "forgotten_class": label})
    report.to_json(out / "report.json")
    result.certificate.to_json(out / "certificate.json")
    e = report.extra
    human = (f"forgot class {label} of {ds.name}: {report.n_forgotten}/{report.n_forget} training points "
             f"mispredicted in {report.unlearn_seconds:.1f} s\n"
             f"A_u {100 * e['A_u_before']:.2f} -> {100 * e['A_u_after']:.2f}   A_tes_u {100 * e['A_tes_u_before']:.2f} -> "
             f"{100 * e['A_tes_u_after']:.2f}\nA_res {100 * e['A_res_before']:.2f} -> {100 * e['A_res_after']:.2f}   "
             f"A_tes_r {100 * e['A_tes_r_before']:.2f} -> {100 * e['A_tes_r_after']:.2f}   changed on other classes: "
             f"train {e['changed_other_train']}, test {e['changed_other_test']}")
    _emit(report.to_dict(), as_json, human)


@cli.command(name="audit")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The patched model (.safetensors).")
@click.option("--certificate", "cert_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="certificate.json (its .proof.safetensors is read from beside it).")
@click.option("--data", "data_name", default=None, help="Data set of the forgotten points (with --indices).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--indices", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Training-set indices of the forgotten points (e.g. forget_indices.txt).")
@click.option("--mode", type=click.Choice(["white-box", "black-box"]), default="white-box", show_default=True)
@click.option("--samples", type=click.IntRange(min=0), default=20, show_default=True,
              help="Regions re-solved by exact LP.")
@click.option("--exhaustive", is_flag=True, help="Re-solve every region by exact LP.")
@seed_option
@json_option
@handle_errors
def audit_cmd(model_path, cert_path, data_name, data_dir, indices, mode, samples, exhaustive, seed, as_json):
    """Re-check a certificate against a patched model from scratch; exit 3 if any claim is rejected.

    Example: prune audit --model forgot/patched.safetensors --certificate forgot/certificate.json --data digits --indices forgot/forget_indices.txt
    """
    from ..verify.audit import audit
    from ..verify.certificate import Certificate
    from ..core.serialization import load

    if (data_name is None) != (indices is None):
        raise click.UsageError("Use --data and --indices together (the forgotten points), or neither.")
    cert = Certificate.from_json(cert_path)
    model = load(model_path)
    points = labels = extra = None
    if data_name is not None:
        from ..experiments.datasets import load_dataset

        ds = load_dataset(data_name, data_dir)
        idx = read_indices(indices, len(ds.y_train))
        points, labels, extra = ds.X_train[idx], ds.y_train[idx], ds.X_test
    result = audit(model, cert, points=points, labels=labels, mode=mode, lp_samples=samples, exhaustive=exhaustive,
                   locality_inputs=extra, seed=seed)
    _emit(result.to_dict(), as_json, result.summary())
    if not result.passed:
        sys.exit(3)


@cli.command()
@click.argument("experiment", type=click.Choice(["table3", "table4", "fig3", "fig4", "fig5", "table5"]))
@data_options
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Repetitions (seeds 0…N-1).")
@click.option("--sizes", default="100,200,300,500", show_default=True, help="|D_U| values (table3/4, fig3, fig5).")
@click.option("--methods", default="prune,retrain,sisa,amnesiac,fu", show_default=True,
              help="Methods for table3/table4/fig3.")
@click.option("--clusters", "k_values", default="2,3,4,6,8", show_default=True, help="K values for fig4.")
@click.option("--bound", type=click.Choice(["box", "dual", "lp"]), default="box", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the training recipe's epochs.")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Random class labels drawn for table5.")
@relaxed_support_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True,
              help="Results folder (a subfolder per data set).")
@handle_errors
def bench(experiment, data_name, data_dir, seeds, sizes, methods, k_values, bound, epochs, trials, radius_scale,
          intermediate, decision_gate, out):
    """Reproduce one of the paper's tables or figures; writes CSV, Markdown, PNG and config.json.

    table3, table4 and fig3 come from the same runs (Table III, IV, Figure 3). --radius-scale,
    --intermediate and --decision-gate apply to table5.

    Example: prune bench table3 --data mnist --data-dir ../shared/data/mnist
    """
    from ..experiments.runner import ExperimentConfig, run_convergence, run_table3

    def parse(text, what):
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"comma-separated integers, got {text!r}", param_hint=what) from None

    dest = out / data_name
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731 - progress to stderr, results in files
    if experiment in ("table3", "table4", "fig3"):
        cfg = ExperimentConfig(dataset=data_name, data_dir=str(data_dir) if data_dir else None,
                               sizes=tuple(parse(sizes, "--sizes")), seeds=seeds,
                               methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                               prune_bound=bound, epochs=epochs)
        run_table3(cfg, dest, log=log)
        click.echo(str(dest / f"table3-{data_name}.md"))
    elif experiment in ("fig4", "fig5"):
        vary = "K" if experiment == "fig4" else "n"
        values = parse(k_values, "--clusters") if vary == "K" else parse(sizes, "--sizes")
        fixed = 100 if vary == "K" else 4  # the paper: |D_U| = 100 for Figure 4, K = 4 for Figure 5
        run_convergence(data_name, dest, vary=vary, values=values, fixed=fixed, data_dir=data_dir, seeds=seeds,
                        bound=bound, epochs=epochs, log=log)
        click.echo(str(dest / f"{experiment}-{data_name}.md"))
    else:
        from ..experiments.runner import run_table5

        run_table5(data_name, dest, data_dir=data_dir, trials=trials, epochs=epochs, radius_scale=radius_scale,
                   intermediate=intermediate, decision_gate=decision_gate, log=log)
        click.echo(str(dest / f"table5-{data_name}.md"))


def main() -> None:  # console-script entry point
    cli(prog_name="prune")


if __name__ == "__main__":
    main()


# Commands defined beside their libraries (they share _clickutil's option bundles).
from .export import register as _register_export  # noqa: E402
from .ledger import register as _register_ledger  # noqa: E402

_register_export(cli)
_register_ledger(cli)
