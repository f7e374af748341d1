"""The library's thread policy: its kernels run with one torch thread and restore the caller's setting."""

import pytest
import torch

from prune_unlearn import _threads
from prune_unlearn._threads import get_threads, kernel_threads, parallel_map, set_threads


def test_kernel_threads_sets_one_and_restores():
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with kernel_threads():
            assert torch.get_num_threads() == 1
            with kernel_threads():  # nested: left to the outermost block
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            with kernel_threads():
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2  # restored on errors too
    finally:
        torch.set_num_threads(saved)


def test_bounds_run_single_threaded_whatever_the_caller_set():
    from prune_unlearn.core.bounds import ibp_head_bounds
    from prune_unlearn.core.regions import HeadNetwork

    seen = []
    head = HeadNetwork((torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)),
                       (torch.zeros(4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)))
    saved = torch.get_num_threads()
    real = torch.relu
    try:
        torch.set_num_threads(2)

        def spy(x):
            seen.append(torch.get_num_threads())
            return real(x)
        torch.relu = spy
        ibp_head_bounds(head, torch.zeros(3), torch.ones(3))
    finally:
        torch.relu = real
        torch.set_num_threads(saved)
    assert seen and set(seen) == {1}


def test_setting_environment_and_validation(monkeypatch):
    monkeypatch.setattr(_threads, "_workers", None)
    monkeypatch.setattr(_threads, "_intra_op", None)
    monkeypatch.delenv("PRUNE_THREADS", raising=False)
    monkeypatch.delenv("PRUNE_INTRA_OP_THREADS", raising=False)
    assert _threads.get_intra_op_threads() == 1
    monkeypatch.setenv("PRUNE_INTRA_OP_THREADS", "2")
    assert _threads.get_intra_op_threads() == 2
    set_threads(intra_op=3)
    assert _threads.get_intra_op_threads() == 3 and get_threads() == 1
    set_threads()
    monkeypatch.delenv("PRUNE_INTRA_OP_THREADS")
    assert get_threads() == 1
    monkeypatch.setenv("PRUNE_THREADS", "3")
    assert get_threads() == 3
    set_threads(2)
    assert get_threads() == 2  # the explicit setting wins over the environment
    set_threads(None)
    assert get_threads() == 3
    monkeypatch.setenv("PRUNE_THREADS", "zero")
    with pytest.raises(ValueError, match="PRUNE_THREADS"):
        get_threads()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="set_threads"):
            set_threads(bad)


def test_parallel_map_keeps_order_and_uses_one_torch_thread_per_worker():
    def work(i):
        return i * i, torch.get_num_threads()

    out = parallel_map(work, range(7), workers=3)
    assert [v for v, _ in out] == [i * i for i in range(7)]
    assert {t for _, t in out} == {1}
    assert parallel_map(work, [], workers=2) == []


def test_bounds_are_the_same_with_one_or_two_workers(digits, digits_small_model):
    """Chunks of regions are independent: splitting them over workers changes nothing."""
    from prune_unlearn.core.confusion import margin_upper_bounds
    from prune_unlearn.core.regions import HeadNetwork, point_regions
    from prune_unlearn.core.split import split_model

    split = split_model(digits_small_model)
    head = HeadNetwork.from_split(split)
    pr = point_regions(head, split, digits.X_train[:40])
    th = 2 * pr.min_slack.clamp(min=1e-6)
    tg = (pr.logits.argmax(1) + 1) % 10
    lo, hi = torch.zeros(64, dtype=torch.float64), torch.ones(64, dtype=torch.float64)
    results = []
    for workers in (1, 2):
        set_threads(workers)
        try:
            results.append(margin_upper_bounds(head, pr.masks, th, tg, lo, hi, "dual", chunk_size=8))
        finally:
            set_threads(None)
    assert torch.equal(results[0].upper, results[1].upper)
    assert torch.equal(results[0].multipliers, results[1].multipliers)
