"""Reports are documents like certificates: versioned, typed, plain JSON (no NaN), read back with checks."""

import json
import warnings

import pytest
import torch

from _helpers.models import tiny_mlp
from prune_unlearn import ClassReport, Report, forget, forget_class
from prune_unlearn.errors import FormatError, UncertifiedWarning
from prune_unlearn.unlearn.report import REPORT_FORMAT_VERSION

pytestmark = pytest.mark.usefixtures("one_thread")


def _points(n, seed):
    return torch.rand(n, 4, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return tiny_mlp((4, 8, 8, 3), seed=0)  # predicts classes 0 and 2 on [0, 1]^4


@pytest.fixture(scope="module")
def point_run(model):
    x = _points(6, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncertifiedWarning)  # every point forgotten: no warning
        res = forget(model, x, seed=0, test_data=(x[:0], torch.zeros(0, dtype=torch.int64)), radius=None)
    assert res.report.n_failed == 0
    return res


@pytest.fixture(scope="module")
def class_run(model):
    x = _points(300, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    members = x[y == 2]
    res = forget_class(model, 2, members, seed=0, train_data=(x, y), test_data=(x[:50], y[:50]))
    return res, members


def _strict_json(text):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_round_trip_and_no_nan(point_run, tmp_path):
    report = point_run.report
    assert report.A_tes_before != report.A_tes_before  # an accuracy over no test points is NaN in memory …
    data = _strict_json(report.to_json(tmp_path / "report.json"))
    assert data["A_tes_before"] is None and data["A_tes_after"] is None  # … and null in JSON
    assert data["format_version"] == REPORT_FORMAT_VERSION and data["whole_class"] is None and "extra" not in data
    again = Report.from_json(tmp_path / "report.json")
    assert again.to_dict() == report.to_dict() and again.A_tes_before is None
    assert again.n_forget == 6 and again.failed == [] and again.timings == report.timings


def test_class_runs_have_typed_fields(class_run, tmp_path):
    res, members = class_run
    whole = res.report.whole_class
    assert isinstance(whole, ClassReport) and whole.label == 2 and whole.crown_points > 0
    assert whole.A_u_before == 1.0 and whole.A_u_after == 0.0 and whole.flipped_class_train == len(members)
    assert whole.common_radius is None and whole.stragglers_per_point >= 0
    assert set(res.report.timings) == {"rounds"}
    metrics = whole.metrics()
    assert "label" not in metrics and metrics["A_tes_r_before"] == whole.A_tes_r_before
    res.report.to_json(tmp_path / "class.json")
    again = Report.from_json(tmp_path / "class.json")
    assert again == res.report and isinstance(again.whole_class, ClassReport)


def test_reading_checks_version_and_keys(point_run, class_run):
    data = point_run.report.to_dict()
    with pytest.raises(FormatError, match=r"format_version 99 is not supported .* reads versions 1, 2, 3"):
        Report.from_dict({**data, "format_version": 99})
    missing = {k: v for k, v in data.items() if k not in ("n_forget", "failed")}
    with pytest.raises(FormatError, match=r"does not have the key\(s\) 'n_forget', 'failed'"):
        Report.from_dict(missing)
    with pytest.raises(FormatError, match=r"unknown key\(s\) 'extra'"):
        Report.from_dict({**data, "extra": {}})
    whole = class_run[0].report.to_dict()
    del whole["whole_class"]["reach_other_test"]
    with pytest.raises(FormatError, match=r"whole_class entry does not have the key\(s\) 'reach_other_test'"):
        Report.from_dict(whole)
    with pytest.raises(FormatError, match="must be a JSON object"):
        Report.from_dict([1, 2])


def test_uncertified_warning_names_the_failures(digits, digits_small_model):
    idx = torch.randperm(len(digits.y_train), generator=torch.Generator().manual_seed(6))[:50]
    with pytest.warns(UncertifiedWarning, match=r"of 50 point\(s\) were not forgotten \(not reached") as caught:
        res = forget(digits_small_model, digits.X_train[idx], labels=digits.y_train[idx], strategy="cluster",
                     delta=0.5, n_clusters=3, seed=0, radius=None)
    assert res.report.n_failed > 0 and len(res.certificate.failed) == res.report.n_failed
    assert f"{res.report.n_failed} of 50" in str(caught[0].message)
    assert caught[0].filename == __file__  # attributed to the caller's line, not to the library


def test_export_error_lives_with_the_other_errors():
    from prune_unlearn import ExportError as top
    from prune_unlearn.errors import ExportError, PruneError
    from prune_unlearn.verify.export import ExportError as reexported

    assert top is ExportError is reexported and issubclass(ExportError, PruneError)


def test_a_version_1_report_reads_back_without_neighbourhood_fields(point_run):
    data = point_run.report.to_dict()
    for key in Report._ADDED_IN_2:
        del data[key]
    data["format_version"] = 1
    back = Report.from_dict(data)
    assert back.n_certified_neighbourhood == 0 and back.radius is None and back.radius_median is None
    assert back.n_certified_region == point_run.report.n_certified_region


def test_a_version_1_report_reads_with_the_new_counts_zero(point_run):
    data = point_run.report.to_dict()
    old = {k: v for k, v in data.items() if k not in ("n_already_forgotten", "n_regions_resolved")}
    again = Report.from_dict({**old, "format_version": 1})
    assert again.n_already_forgotten == 0 and again.n_regions_resolved == 0 and again.format_version == REPORT_FORMAT_VERSION
    with pytest.raises(FormatError, match=r"does not have the key\(s\) 'n_already_forgotten'"):
        Report.from_dict({**old, "format_version": 2})


def test_a_version_2_report_reads_back_without_a_ball_space(point_run):
    data = {k: v for k, v in point_run.report.to_dict().items() if k != "ball_space"}
    back = Report.from_dict({**data, "format_version": 2})
    assert back.ball_space is None and back.format_version == REPORT_FORMAT_VERSION


def test_forgetting_a_point_again_is_reported_as_already_forgotten(model, point_run):
    """The second run used to report n_regions_new 1 and A_u_before 1.0 for points already forgotten."""
    x = _points(6, 0)
    again = forget(point_run.model, x[:2], labels=model(x[:2]).argmax(1), seed=0, radius=None)
    r = again.report
    assert r.n_already_forgotten == 2 and r.A_u_before == 0.0 and r.A_u_after == 0.0
    assert r.n_regions_new == 0 and r.n_patches_total == point_run.report.n_patches_total
    assert r.n_regions_resolved >= 1
    assert "already forgotten: 2 of the points" in r.summary() and "0 new, " in r.summary()
    fresh = point_run.report
    assert fresh.n_already_forgotten == 0 and fresh.n_regions_resolved == 0
    assert fresh.n_regions_new == fresh.n_patches_total
