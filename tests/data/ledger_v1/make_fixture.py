"""Writes the ledger fixture of ``tests/test_ledger_format.py``: ``ledger.sqlite`` and ``model.safetensors``.

The committed files were written by this script with the code of commit 4bbbe5f (before ``ops/ledger.py`` was
split into store/chain/commit/intake), so that the split (and any later change) is checked against a ledger
written by an earlier version. Do not regenerate them unless the ledger format version changes; a new
format gets a new fixture folder next to this one.

    PYTHONPATH=src python tests/data/ledger_v1/make_fixture.py /tmp/prune-ledger-fixture
"""

import sys
from pathlib import Path

import numpy as np
import torch

from prune_unlearn import Ledger, load_dataset, save
from prune_unlearn.core.models import mlp

torch.set_num_threads(1)
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
model_path, ledger_path = out / "model.safetensors", out / "ledger.sqlite"
for p in (model_path, ledger_path):
    p.unlink(missing_ok=True)
digits = load_dataset("digits")
torch.manual_seed(0)
save(mlp(digits.input_dim, [8], digits.num_classes).eval(), model_path)
np.save(out / "points.npy", digits.X_train[50:52].numpy())
with Ledger(ledger_path) as ledger:
    ledger.add("alice@example.org", indices=[0, 5], data="digits")
    ledger.add_many([{"requester": "bob", "indices": [17]}, {"requester": "carol", "indices": [40, 41, 42]}],
                    data="digits")
    ledger.add("erin", points_file=out / "points.npy", data="digits")   # labels found by hash in digits
    ledger.process(model_path, data="digits", batch_size=2)          # two process events
    ledger.undo(1, model_path)
    ledger.add("dave", indices=[100], data="digits")                 # left pending
    assert ledger.verify(model_path).ok
    print(ledger, ledger.head)
(out / "points.npy").unlink()  # processed: never re-read

# What the code that wrote the ledger reads back from it (compared by the test after any change).
import json  # noqa: E402

with Ledger(ledger_path) as ledger:
    verdict = ledger.verify(model_path).to_dict()
    verdict["model"] = Path(verdict["model"]).name
    snapshot = {"head": ledger.head, "repr": repr(ledger).replace(str(ledger_path), "ledger.sqlite"),
                "events": ledger.events(), "requests": [r.to_dict() for r in ledger.requests()],
                "verify": verdict}
(out / "expected.json").write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
