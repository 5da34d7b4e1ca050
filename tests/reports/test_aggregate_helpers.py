"""The small helpers every leaderboard number passes through (reports.aggregate), on values written out by hand:
formatting (negative zero, NaN, digits), ledger rounding, seed mean and sample std, the run kept per seed,
GPU-hours."""

import math

import pytest

from reports.aggregate import _fmt, _gpu_hours, _mean_std, _num, _pick_per_seed, _r


def test_fmt_digits_missing_values_and_negative_zero():
    assert _fmt(None) == "" and _fmt(float("nan")) == "" and _fmt("nan") == ""
    assert _fmt(1.234) == "1.23" and _fmt(1.235, 1) == "1.2" and _fmt("66.4") == "66.40" and _fmt(2) == "2.00"
    assert _fmt(9.45678, 4) == "9.4568" and _fmt(95.0, 0) == "95"
    # a tiny negative delta is printed as zero, never "-0.00"; real negatives keep their sign
    assert _fmt(-0.001) == "0.00" and _fmt(-0.00001, 4) == "0.0000"
    assert _fmt(-0.006) == "-0.01" and _fmt(-0.001, 3) == "-0.001" and _fmt(-1.6, 0) == "-2"


def test_ledger_rounding_and_csv_numbers():
    assert _r(None) is None and _r(float("nan")) is None
    assert _r(1.23456789) == 1.234568 and _r(1.23456789, 4) == 1.2346 and _r("2.5") == 2.5
    assert _num(None) is None and _num("") is None and _num("1.5") == 1.5 and _num("0") == 0.0


def test_seed_mean_and_sample_std_by_hand():
    assert _mean_std([]) == (None, None) and _mean_std([None, None]) == (None, None)
    assert _mean_std([5.0]) == (5.0, None)  # one seed: no std
    mean, std = _mean_std([1.0, None, 2.0, 6.0])  # missing values are left out, not counted as 0
    assert mean == 3.0 and std == pytest.approx(math.sqrt((4 + 1 + 9) / 2), rel=1e-15)  # n - 1


def test_newest_run_per_seed_sorted_by_seed_text_then_run_id():
    runs = [
        {"seed": 1, "created": "2026-01-01T00:00", "run_id": "z"},
        {"seed": 1, "created": "2026-01-02T00:00", "run_id": "b"},  # newer: wins over the larger run id
        {"seed": 0, "created": "", "run_id": "c"},
        {"seed": 0, "created": None, "run_id": "a"},  # same (missing) time: the larger run id wins
        {"seed": 2, "created": "", "run_id": "e"},
        {"seed": 2, "created": "2026-01-01T00:00", "run_id": "d"},  # no time loses to a time, in either order
        {"seed": 3, "created": "2026-01-01T00:00", "run_id": "g"},
        {"seed": 3, "created": "", "run_id": "h"},
        {"seed": 10, "created": "2026-01-03T00:00", "run_id": "f"},
    ]
    chosen = _pick_per_seed(runs)
    assert [(e["seed"], e["run_id"]) for e in chosen] == [(0, "c"), (1, "b"), (10, "f"), (2, "d"), (3, "g")]


def test_gpu_hours_are_wall_hours_times_gpus_of_cuda_runs():
    def record(env, total_s):
        return {"environment": env, "timings": {} if total_s is None else {"total_s": total_s}}

    assert _gpu_hours(record({"device": "cuda", "gpu_count": 4}, 5400)) == 6.0
    assert _gpu_hours(record({"device": "cuda"}, 5400)) == 1.5  # no count recorded: one GPU
    assert _gpu_hours(record({"device": "cuda", "gpu_count": None}, "7200")) == 2.0
    assert _gpu_hours(record({"device": "cpu", "gpu_count": 4}, 5400)) is None
    assert _gpu_hours(record({"device": "cuda", "gpu_count": 4}, None)) is None
    assert _gpu_hours({}) is None
