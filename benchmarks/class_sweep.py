"""forget_class settings against Table V's metrics, a few labels at a time: how the radius scales, CROWN
vs CROWN-IBP radii, the decision gate and the budgets behind docs/results.md (Table V) and docs/design.md.

    PRUNE_DATA_DIR=../shared/data python benchmarks/class_sweep.py --data mnist --labels 3,8,9 \\
        --configs '[{"radius_scale": 5, "intermediate": "ibp"}, {"radius_scale": 5, "intermediate": "ibp",
                     "decision_gate": false}]'

Each configuration is a dict of forget_class keyword arguments. The base model is trained with the data set's
recipe (seed 0, the same model as `prune bench table5`), or read from --model. One line per (configuration, label):
A_u, A_tes_u after, the change of A_tes_r, the relaxed supports' ungated reach into other classes, seconds.
"""

import argparse
import json

from prune_unlearn import load_dataset
from prune_unlearn.core.models import default_architecture
from prune_unlearn.core.serialization import load
from prune_unlearn.experiments.training import recipe_for, train_from_spec
from prune_unlearn.unlearn.whole_class import forget_class

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--data", default="digits")
ap.add_argument("--data-dir", default=None)
ap.add_argument("--model", default=None, help="a saved base model (default: train one with the recipe)")
ap.add_argument("--labels", default="3,8,1")
ap.add_argument("--configs", default='[{"radius_scale": 2.0, "intermediate": "ibp"}]')
args = ap.parse_args()

ds = load_dataset(args.data, args.data_dir)
if args.model:
    base = load(args.model).eval()
else:
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes, ds.input_shape)
    base = train_from_spec(spec, ds.X_train, ds.y_train, recipe_for(ds.name, seed=0)).model.eval()
for cfg in json.loads(args.configs):
    for label in (int(v) for v in args.labels.split(",")):
        cls = ds.y_train == label
        res = forget_class(base, label, ds.X_train[cls], seed=label, domain=(ds.domain_lower, ds.domain_upper),
                           train_data=(ds.X_train, ds.y_train), test_data=(ds.X_test, ds.y_test), **cfg)
        e, r = res.report.whole_class.metrics(), res.report
        print(f"{json.dumps(cfg)} class {label}: A_u {e['A_u_after']:.4f} A_tes_u {e['A_tes_u_after']:.4f} "
              f"dA_tes_r {100 * (e['A_tes_r_after'] - e['A_tes_r_before']):+.2f} pp "
              f"reach {e['reach_other_test']:.3f} {r.unlearn_seconds:.2f} s "
              f"relaxed {sum(x['relaxed_supports'] for x in r.rounds)}", flush=True)
