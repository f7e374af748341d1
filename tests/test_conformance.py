"""One conformance suite over every kind of model the library hands out (in the spirit of Opacus'
``BasePrivacyEngineTest``): :class:`ModelKindSuite` holds the checks, and each subclass only says how to
build one kind — plain MLP, point-patched, class-patched, point+class-patched, conv prefix — and what
export does with it.

Every operation that touches a saved model runs on each kind: save/load (bit-identical logits, one
hash), the certificate (it names exactly this model), the audit (passes; fails after one tampered
weight or patch value), the ledger (process then undo: class rows survive, every hash agrees with the
file, and undoing every request gives back the subject's tensors byte for byte), and export (or its clear
refusal). The ledger round trip runs twice per kind: with ``process``'s default (``radius="auto"``: ball rows
where a certified ball applies — ``default_balls`` — region rows elsewhere) and with the kind's explicit options
(region-only, or a fixed radius on a model that already has ball rows). Hashes are recomputed here from the
documented naming (``base.<name>``, ``patches.<field>``, ``class_patches.<field>``, ``neighbourhoods.<field>``)
rather than taken from the library.

Issue 10's two defects — the ledger hashed a class-patched model without its class rows, and ``undo``
rebuilt the model without them — fail ``test_ledger_process_then_undo`` on both class kinds. An undo that
left an empty set of ball rows behind (``neighbourhoods.*`` tensors with no rows, where the subject had none)
fails its default mode on the plain, recorded and recorded class-patched kinds.

Consolidation (issue 13) runs on every kind too (``test_consolidate``): on a model from recorded training
(:class:`TestRecordedMLP`) the ledger's processed requests are consolidated — their points leave the data
manifest, their rows leave the model, which is the record's aggregate bit for bit plus the rows of a request
processed meanwhile (certified again); everywhere else it is refused with a clear error and nothing is
written: a model not trained in recorded mode, or one carrying rows no ledger request owns (a recorded model
class-patched by ``forget_class``, :class:`TestRecordedClassPatched`).
"""

from __future__ import annotations

import copy
import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _helpers.models import TinyConvNet
from prune_unlearn import Ledger, audit, forget, forget_class, load, load_info, save
from prune_unlearn._hashing import state_sha256
from prune_unlearn.core.models import mlp
from prune_unlearn.core.patches import PatchedModel, PatchSet
from prune_unlearn.core.split import split_model
from prune_unlearn.errors import InputValidationError, LedgerError, UnsupportedModelError
from prune_unlearn.experiments.datasets import Dataset
from prune_unlearn.experiments.recorded import aggregate, train_recorded
from prune_unlearn.experiments.records import RecordStore
from prune_unlearn.experiments.training import Recipe
from prune_unlearn.ops.engine import SerialEngine
from prune_unlearn.verify.certificate import Certificate

REGION = {"radius": None}  # region-only (forget's default is a ball where one applies)

pytestmark = pytest.mark.usefixtures("one_thread")


def _rand(n, shape, seed):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def _mlp(seed=0):
    torch.manual_seed(seed)
    return mlp(4, [8, 8], 3).eval()


def _data(base, shape, n=400, seed=1) -> Dataset:
    """Points in [0, 1] labelled by the base model's own predictions."""
    X = _rand(n, shape, seed)
    with torch.no_grad():
        y = base(X).argmax(1)
    return Dataset("conformance", X, y, X[:0], y[:0], num_classes=3)


def _file_state(model) -> dict:
    """The named tensors a saved file must hold, written out from the documented naming."""
    if isinstance(model, PatchedModel):
        return dict(model.state_dict())
    return {f"base.{k}": v for k, v in model.state_dict().items()}


def _patch_state(model) -> dict:
    return {k: v for k, v in _file_state(model).items() if not k.startswith("base.")}


def _class_rows(model) -> dict:
    return {k: v for k, v in _patch_state(model).items() if k.startswith("class_patches.")}


def _point_hashes(x) -> list[str]:
    rows = x.detach().to(torch.float32).reshape(len(x), -1).numpy()
    return [hashlib.sha256(np.ascontiguousarray(r).tobytes()).hexdigest() for r in rows]


def _has_class_rows(model) -> bool:
    return getattr(model, "class_patches", None) is not None and len(model.class_patches) > 0


def _as_patched(model, head) -> PatchedModel:
    if isinstance(model, PatchedModel):
        return model
    split = split_model(model, head)
    return PatchedModel(model, PatchSet(sum(split.hidden_sizes), split.num_classes), head=head).eval()


def _patterns(model) -> set[bytes]:
    if not isinstance(model, PatchedModel):
        return set()
    return {bytes(row.tolist()) for row in model.patches.patterns}


def _equal_states(a: dict, b: dict) -> bool:
    """Same names, dtypes, shapes and bytes (NaN thresholds of point-claim rows compare equal)."""
    def raw(t):
        return t.dtype, tuple(t.shape), t.detach().cpu().contiguous().numpy().tobytes()

    return a.keys() == b.keys() and all(raw(a[k]) == raw(b[k]) for k in a)


class ModelKindSuite:
    """The checks every kind of model passes. A subclass implements :meth:`build` and may set
    ``export_refusal`` (exception type, message pattern) and ``export_head_only``."""

    shape = (4,)
    head: str | None = None
    export_refusal: tuple[type, str] | None = None
    export_head_only = False
    consolidate_refusal: tuple[type, str] | None = (LedgerError, "was not trained in recorded mode")
    ledger_neighbourhood: dict | None = REGION  # the ledger's explicit neighbourhood options (its "explicit" mode)
    default_balls = False  # whether the ledger's default process (radius="auto") adds ball rows to this kind

    def build(self) -> SimpleNamespace:
        """``model`` (what the library handed out), ``base`` (for load), ``data`` (a Dataset), and where
        there is one, ``certificate`` with the ``points``/``labels`` it claims; a recorded model also has
        ``info`` (its file header's info, naming the training record). ``self.tmp`` is a folder for the class."""
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def subject(cls, tmp_path_factory):
        kind = cls()
        kind.tmp = tmp_path_factory.mktemp(cls.__name__)
        s = kind.build()
        s.model.eval()
        return s

    def _load(self, s, path):
        return load(path, base=None if getattr(s.base, "prune_architecture", None) else s.base)

    def _probe(self, s):
        return torch.cat([s.data.X_train[:50], _rand(50, self.shape, seed=9)])

    def _requests(self, s, k=3) -> list[int]:
        """Training indices for ledger requests: predicted, not already forgotten, in no patched region
        (so undo's "rows only this request needs" are exactly the rows its process added)."""
        X, y = s.data.X_train, s.data.y_train
        model = _as_patched(s.model, self.head)
        _, covered = model.covering_region(X)
        with torch.no_grad():
            live = model(X).argmax(1) == y
        idx = (live & (covered == 0)).nonzero().flatten()
        assert len(idx) >= k, "the subject leaves too few fresh points for the ledger check"
        return idx[:k].tolist()

    # --- save / load ------------------------------------------------------------------------------------
    def test_save_load_round_trip(self, subject, tmp_path):
        s = subject
        path = tmp_path / "m.safetensors"
        save(s.model, path)
        again = self._load(s, path)
        want = state_sha256(_file_state(s.model))
        assert load_info(path)["tensors_sha256"] == want == state_sha256(_file_state(again))
        assert type(again) is type(s.model) and _equal_states(_file_state(again), _file_state(s.model))
        x = self._probe(s)
        with torch.no_grad():
            assert torch.equal(again(x), s.model(x))

    # --- certificate ------------------------------------------------------------------------------------
    def test_certificate_names_this_model(self, subject):
        s = subject
        if s.certificate is None:
            pytest.skip("a plain model carries no certificate")
        cert = Certificate.from_dict(s.certificate.to_dict())
        assert cert.model_sha256 == state_sha256(dict(s.model.base.state_dict()))
        assert cert.patches_sha256 == state_sha256(_patch_state(s.model))
        assert len(cert.regions) == len(s.model.patches) and cert.library_version
        claimed = {c["point_sha256"] for c in cert.claims}
        assert claimed == set(_point_hashes(s.points)) and not cert.failed
        with torch.no_grad():
            assert (s.model(s.points).argmax(1) != s.labels).all()

    # --- audit --------------------------------------------------------------------------------------------
    def test_audit_passes_then_catches_one_tampered_weight(self, subject):
        s = subject
        if s.certificate is None:
            pytest.skip("a plain model carries no certificate to audit")
        result = audit(s.model, s.certificate, points=s.points, labels=s.labels, lp_samples=3)
        assert result.passed, result.summary()
        tampered = copy.deepcopy(s.model)
        with torch.no_grad():
            next(tampered.base.parameters()).view(-1)[0] += 1e-3
        failures = audit(tampered, s.certificate, points=s.points, labels=s.labels).failures
        assert any("weights hash" in c.detail for c in failures)
        rows = copy.deepcopy(s.model)
        values = (rows.class_patches.values if _has_class_rows(rows) else
                  rows.neighbourhoods.values if rows.has_neighbourhoods else rows.patches.values)
        with torch.no_grad():
            values.view(-1)[0] += 1e-3
        failures = audit(rows, s.certificate, points=s.points, labels=s.labels).failures
        assert any("patch-set hash" in c.detail for c in failures)

    # --- ledger -------------------------------------------------------------------------------------------
    @pytest.mark.parametrize("mode", ["default", "explicit"])
    def test_ledger_process_then_undo(self, subject, tmp_path, mode):
        s = subject
        options = None if mode == "default" else self.ledger_neighbourhood
        path = tmp_path / "model.safetensors"
        save(s.model, path)
        base = None if getattr(s.base, "prune_architecture", None) else s.base
        idx = self._requests(s)
        X, y = s.data.X_train, s.data.y_train
        with Ledger(tmp_path / "ledger.sqlite") as ledger:
            ledger.add("alice", indices=idx[:2], data=s.data)
            ledger.add("bob", indices=idx[2:], data=s.data)
            result = ledger.process(path, data=s.data, base=base, neighbourhood=options)
            processed = self._load(s, path)
            if mode == "default":  # where the default is a ball, the round trip below is a ball round trip
                assert processed.has_neighbourhoods == self.default_balls
            assert result.model_sha256 == load_info(path)["tensors_sha256"] == state_sha256(_file_state(processed))
            assert _equal_states(_class_rows(processed), _class_rows(s.model))  # class rows survive process
            assert _patterns(s.model) <= _patterns(processed)
            with torch.no_grad():
                assert (processed(X[idx]).argmax(1) != y[idx]).all()
                if s.certificate is not None:
                    assert (processed(s.points).argmax(1) != s.labels).all()
            for request in (1, 2):
                undone = ledger.undo(request, path, base=base)
                after = self._load(s, path)
                assert undone.model_sha256 == load_info(path)["tensors_sha256"] == state_sha256(_file_state(after))
                assert _equal_states(_class_rows(after), _class_rows(s.model))  # and undo
            assert ledger.verify(path).ok
        x = self._probe(s)
        with torch.no_grad():
            assert torch.equal(after(x), s.model(x))  # every request undone: the subject's outputs, bit for bit
            if s.certificate is not None:
                assert (after(s.points).argmax(1) != s.labels).all()
        # and the subject's file, byte for byte in its tensors (a plain subject: as a patched model without rows);
        # an undo that left empty ``neighbourhoods.*`` tensors behind failed here in the default mode
        assert _equal_states(_file_state(after), _file_state(_as_patched(s.model, self.head)))

    # --- export -------------------------------------------------------------------------------------------
    def test_export_or_its_clear_refusal(self, subject, tmp_path):
        from prune_unlearn.verify.export import ALLOWED_OPS, export_onnx

        s = subject
        if self.export_refusal is not None:
            error, message = self.export_refusal
            with pytest.raises(error, match=message):
                export_onnx(s.model, tmp_path / "m.onnx", head_only=self.export_head_only)
            return
        if self.export_head_only:  # a conv prefix: only the head is in verifier normal form
            with pytest.raises(UnsupportedModelError, match="head_only=True"):
                export_onnx(s.model, tmp_path / "m.onnx")
        info = export_onnx(s.model, tmp_path / "m.onnx", head_only=self.export_head_only)
        assert set(info.op_types) <= ALLOWED_OPS and info.regions == tuple(range(len(s.model.patches)))
        import onnxruntime as ort

        x = self._probe(s)
        with torch.no_grad():
            h = s.model.split.features(x) if self.export_head_only else x.reshape(len(x), -1)
            want = s.model(x)
        session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"X": h.numpy()})[0])
        assert torch.equal(got.argmax(1), want.argmax(1))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    # --- consolidation (issue 13) -------------------------------------------------------------------------
    def test_consolidate(self, subject, tmp_path):
        s = subject
        path, ledger_path = tmp_path / "model.safetensors", tmp_path / "ledger.sqlite"
        save(s.model, path, info=getattr(s, "info", None))
        base = None if getattr(s.base, "prune_architecture", None) else s.base
        idx = self._requests(s, k=4)
        with Ledger(ledger_path) as ledger:
            ledger.add("alice", indices=idx[:2], data=s.data)
            ledger.add("bob", indices=idx[2:3], data=s.data)
            ledger.process(path, data=s.data, base=base, neighbourhood=REGION)
            ledger.add("carol", indices=idx[3:], data=s.data)  # processed while the model retrains
            if self.consolidate_refusal is not None:
                error, message = self.consolidate_refusal
                before, events = path.read_bytes(), ledger.events()
                with pytest.raises(error, match=message):
                    ledger.consolidate(path, engine="local", workers=1, data=s.data, base=base, neighbourhood=REGION)
                assert path.read_bytes() == before and ledger.events() == events  # nothing written
                assert [r.status for r in ledger.requests()] == ["processed", "processed", "pending"]
                assert ledger.verify(path).ok
                return
            result = ledger.consolidate(path, engine=_ProcessMeanwhile(ledger_path, s.data), data=s.data, neighbourhood=REGION)
            assert result.requests == [1, 2] and result.repatched == [3]
            assert [r.status for r in ledger.requests()] == ["consolidated", "consolidated", "processed"]
            assert all(r.patterns == [] for r in ledger.requests(status="consolidated"))
            assert ledger.verify(path).ok
            carol = ledger.get(3)
        store = RecordStore(s.info["training_record"]["root"])
        record = store.get_record(result.record_after)
        manifest_hashes = {h for e in record.shard_table for h in store.get_manifest(e.manifest).hashes}
        assert not set(_point_hashes(s.data.X_train[idx[:3]])) & manifest_hashes  # exactly unlearned
        assert set(_point_hashes(s.data.X_train[idx[3:]])) <= manifest_hashes  # carol is only patched
        after = self._load(s, path)
        assert load_info(path)["tensors_sha256"] == result.model_after == state_sha256(_file_state(after))
        assert isinstance(after, PatchedModel) and not _has_class_rows(after)
        rows = {hashlib.sha256(p.numpy().tobytes()).hexdigest() for p in after.patches.patterns}
        assert rows == set(carol.patterns) and rows  # only carol's rows: the consolidated requests' rows are gone
        retrained = aggregate(record.architecture, [store.get_state(e.checkpoints[-1]) for e in record.shard_table])
        assert _equal_states(dict(after.base.state_dict()), dict(retrained.state_dict()))
        x = self._probe(s)
        _, covered = after.covering_region(x)
        with torch.no_grad():  # outside carol's regions: the retrained model's logits, bit for bit
            assert torch.equal(after(x)[covered == 0], retrained(x)[covered == 0])
            claim = carol.claims[0]  # carol: certified again on the retrained base
            assert claim["proved"] == "region" and claim["margin"] > 0
            assert after(s.data.X_train[idx[3:]]).argmax(1).item() == claim["target"] != claim["label"]



class _ProcessMeanwhile(SerialEngine):
    """Runs the shard tasks here, after processing the pending requests through a second ledger handle (as a
    request arriving while the model retrains would be)."""

    def __init__(self, ledger_path, data):
        self.ledger_path, self.data = ledger_path, data

    def map(self, fn, calls, **kwargs):
        with Ledger(self.ledger_path) as other:
            other.process(self.ledger_path.with_name("model.safetensors"), data=self.data, neighbourhood=REGION)
        return super().map(fn, calls, **kwargs)


# --- the kinds ------------------------------------------------------------------------------------------

def _point_patched(base, data, head=None, start=0):
    pts = data.X_train[start: start + 6]
    res = forget(base, pts, labels=data.y_train[start: start + 6], bound="dual", head=head, seed=0, radius=None)
    return res, pts, data.y_train[start: start + 6]


def _class_patched(base, data):
    members = data.X_train[data.y_train == 0]
    res = forget_class(base, 0, members, seed=0)
    return res, members, torch.zeros(len(members), dtype=torch.int64)


class TestPlainMLP(ModelKindSuite):
    default_balls = True
    export_refusal = (InputValidationError, "Export needs a PatchedModel")

    def build(self):
        base = _mlp()
        return SimpleNamespace(model=base, base=base, data=_data(base, self.shape), certificate=None)


class TestPointPatched(ModelKindSuite):
    def build(self):
        base = _mlp()
        data = _data(base, self.shape)
        res, pts, labels = _point_patched(base, data)
        return SimpleNamespace(model=res.model, base=base, data=data, certificate=res.certificate, points=pts,
                               labels=labels)


class TestClassPatched(ModelKindSuite):
    pass  # class patches export since issue 15 (normal_form false: the gate is a bilinear Mul)

    def build(self):
        base = _mlp()
        data = _data(base, self.shape)
        res, members, labels = _class_patched(base, data)
        assert _has_class_rows(res.model)
        return SimpleNamespace(model=res.model, base=base, data=data, certificate=res.certificate, points=members,
                               labels=labels)


class TestPointAndClassPatched(ModelKindSuite):
    pass  # class patches export since issue 15 (normal_form false: the gate is a bilinear Mul)

    def build(self):
        base = _mlp()
        data = _data(base, self.shape)
        patched = _class_patched(base, data)[0].model
        others = (data.y_train != 0).nonzero().flatten()[:6]
        res = forget(patched, data.X_train[others], labels=data.y_train[others], bound="dual", seed=0, radius=None)
        assert _has_class_rows(res.model) and len(res.model.patches)
        return SimpleNamespace(model=res.model, base=base, data=data, certificate=res.certificate,
                               points=data.X_train[others], labels=data.y_train[others])


class TestNeighbourhoodPatched(ModelKindSuite):
    """Certified neighbourhoods (issue 11): ball rows only; the ledger adds more ball rows next to them (a region
    row may be refused there: its linear region can reach balls with different targets on so small a net)."""
    default_balls = True

    export_refusal = (InputValidationError, "neighbourhood rows")
    ledger_neighbourhood = {"radius": 0.02}

    def build(self):
        base = _mlp()
        data = _data(base, self.shape)
        pts, labels = data.X_train[:6], data.y_train[:6]
        res = forget(base, pts, labels=labels, radius=0.02, seed=0)
        assert res.model.has_neighbourhoods and not len(res.model.patches)
        return SimpleNamespace(model=res.model, base=base, data=data, certificate=res.certificate, points=pts,
                               labels=labels)


class TestConvPrefix(ModelKindSuite):
    shape = (1, 8, 8)
    head = "classifier"
    export_head_only = True

    def build(self):
        base = TinyConvNet(seed=0).eval()
        data = _data(base, self.shape, n=200)
        res, pts, labels = _point_patched(base, data, head=self.head)
        return SimpleNamespace(model=res.model, base=base, data=data, certificate=res.certificate, points=pts,
                               labels=labels)


class TestConvFeatureBalls(ModelKindSuite):
    """Balls around the features of a conv prefix (``ball_space="features"``); the ledger adds more of them, in its
    default mode too (``radius="auto"`` keeps a feature-ball model's mode)."""
    default_balls = True
    shape = (1, 8, 8)
    head = "classifier"
    export_refusal = (InputValidationError, "neighbourhood rows")
    ledger_neighbourhood = {"radius": 0.05, "ball_space": "features"}

    def build(self):
        base = TinyConvNet(seed=0).eval()
        data = _data(base, self.shape, n=200)
        pts, labels = data.X_train[:6], data.y_train[:6]
        res = forget(base, pts, labels=labels, head=self.head, radius=0.05, ball_space="features", seed=0)
        assert res.model.has_neighbourhoods and res.report.n_certified_neighbourhood == 6
        return SimpleNamespace(model=res.model, base=base, data=data, certificate=res.certificate, points=pts,
                               labels=labels)


def _recorded(kind) -> tuple:
    """A recorded MLP (2 SISA shards × 2 slices) trained on points labelled by :func:`_mlp`, and its data."""
    data = _data(_mlp(), kind.shape, n=600)
    spec = mlp(4, [8, 8], 3).prune_architecture
    result = train_recorded(data, spec, Recipe(lr=0.1, epochs=3, batch_size=32, seed=0), kind.tmp / "record",
                            shards=2, slices=2)
    return result.model.eval(), data, {"dataset": data.name, "training_record": result.info()}


class TestRecordedMLP(ModelKindSuite):
    """A model from recorded training: the kind consolidation applies to."""
    default_balls = True
    export_refusal = (InputValidationError, "Export needs a PatchedModel")
    consolidate_refusal = None

    def build(self):
        model, data, info = _recorded(self)
        return SimpleNamespace(model=model, base=model, data=data, certificate=None, info=info)


class TestRecordedClassPatched(ModelKindSuite):
    """A recorded model whose class rows no ledger request owns: consolidation refuses to drop them."""
    default_balls = True
    consolidate_refusal = (LedgerError, "whole-class patch row")

    def build(self):
        base, data, info = _recorded(self)
        res, members, labels = _class_patched(base, data)
        assert _has_class_rows(res.model)
        return SimpleNamespace(model=res.model, base=base, data=data, certificate=res.certificate, points=members,
                               labels=labels, info=info)
