"""reports.aggregate pinned to values on three seeds whose mean, median and midrange differ (two seeds cannot
tell a mean from a median): mean, sample std, rPD, GPU-hours, per-class means and the bootstrap interval are
recomputed here from the records and confusion files in plain numpy."""

import hashlib
import json
import math

import numpy as np
import pytest

from benchmarks.protocols import get_protocol
from reports.aggregate import GROUP_FIELDS, AggregateOptions, merge_into_csv, read_leaderboard, write_leaderboard
from runners.records import load_records

QUALITIES = {0: 0.45, 1: 0.50, 2: 0.85}  # skewed: mean != median != (min + max) / 2
RESAMPLES = 60


def _miou(cm):
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return 100.0 * float(np.mean(tp[union > 0] / union[union > 0]))


def _seed(key):
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def _bootstrap(per_seed, seed):
    """Same image draw for every seed, seed-mean of the dataset-level mIoU (reports.bootstrap, written out)."""
    n = per_seed[0].shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))
    return np.array([np.mean([_miou(cms[row].sum(0)) for cms in per_seed]) for row in idx])


@pytest.fixture
def three_seeds(tmp_path, write_run):
    root = tmp_path / "runs"
    for seed, q in QUALITIES.items():
        write_run(root, "rein", "dinov2_vitl14", seed=seed, quality=q, trainable=2_990_000, hours=2.0)
    csv_path = tmp_path / "leaderboard.csv"
    write_leaderboard(csv_path, merge_into_csv(csv_path, load_records(root), AggregateOptions(resamples=RESAMPLES)))
    rows = {r["target"]: r for r in read_leaderboard(csv_path) if r["kind"] == "reproduced"}
    records = sorted(load_records(root), key=lambda r: r["seed"])
    return rows, records, root


def test_seed_mean_and_sample_std(three_seeds):
    rows, records, _ = three_seeds
    row = rows["Cityscapes"]
    values = [r["results"]["targets"]["cityscapes"]["miou"] for r in records]
    mean = sum(values) / 3
    assert abs(mean - sorted(values)[1]) > 1 and abs(mean - (min(values) + max(values)) / 2) > 1  # fixture check
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (3 - 1))  # sample std (n - 1)
    assert row["n_seeds"] == "3" and row["seeds"] == "0;1;2"
    assert row["miou_mean"] == f"{mean:.2f}" and row["miou_std"] == f"{std:.2f}"
    rpds = [100 * r["results"]["targets"]["cityscapes"]["miou"] / r["results"]["reference"]["miou"] for r in records]
    rpd_mean = sum(rpds) / 3
    assert row["rpd_mean"] == f"{rpd_mean:.2f}"
    assert row["rpd_std"] == f"{math.sqrt(sum((v - rpd_mean) ** 2 for v in rpds) / 2):.2f}"
    assert row["source_miou"] == f"{sum(r['results']['reference']['miou'] for r in records) / 3:.2f}"
    # GPU-hours: total_s / 3600 x gpu count, mean over seeds (fixture: 2 h x (1 + 0.1 seed))
    assert row["gpu_hours"] == f"{(2.0 + 2.2 + 2.4) / 3:.4f}"
    per_class = json.loads(row["per_class_iou"])
    road = [r["results"]["targets"]["cityscapes"]["per_class_iou"]["road"] for r in records]
    assert per_class["road"] == round(sum(road) / 3, 2)
    assert row["delta_vs_reported"] == f"{float(row['miou_mean']) - 66.40:.2f}"


def test_average_row_is_the_mean_over_targets(three_seeds):
    rows, records, _ = three_seeds
    avg = rows["Avg(C/B/M)"]
    means = [sum(r["results"]["targets"][k]["miou"] for k in ("cityscapes", "bdd100k", "mapillary")) / 3
             for r in records]
    assert avg["miou_mean"] == f"{sum(means) / 3:.2f}" and avg["n_seeds"] == "3"


def test_bootstrap_interval_recomputed_from_the_confusion_files(three_seeds):
    rows, records, root = three_seeds
    dists = {}
    for target, key in (("Cityscapes", "cityscapes"), ("BDD100K", "bdd100k"), ("Mapillary", "mapillary")):
        row = rows[target]
        per_seed = []
        for r in records:
            with np.load(root / r["run_id"] / r["results"]["targets"][key]["confusion"]) as z:
                order = np.argsort(z["names"])
                per_seed.append(z["confusion"][order])
        seed = _seed("|".join([row[f] for f in GROUP_FIELDS] + [target]))
        dists[target] = _bootstrap(per_seed, seed)
        lo, hi = np.quantile(dists[target], [0.025, 0.975])
        assert (row["miou_ci_low"], row["miou_ci_high"]) == (f"{lo:.2f}", f"{hi:.2f}"), target
        assert row["ci_level"] == "95" and row["ci_resamples"] == str(RESAMPLES)
    avg = np.mean([dists[t] for t in ("Cityscapes", "BDD100K", "Mapillary")], axis=0)
    lo, hi = np.quantile(avg, [0.025, 0.975])
    assert (rows["Avg(C/B/M)"]["miou_ci_low"], rows["Avg(C/B/M)"]["miou_ci_high"]) == (f"{lo:.2f}", f"{hi:.2f}")


def test_one_seed_has_no_std_and_a_cpu_run_no_gpu_hours(tmp_path, write_run):
    root = tmp_path / "runs"
    write_run(root, "rein", "dinov2_vitl14", seed=0, quality=0.6, device="cpu", protocol=get_protocol("city2bm"))
    csv_path = tmp_path / "leaderboard.csv"
    rows = [r for r in merge_into_csv(csv_path, load_records(root), AggregateOptions(resamples=0))
            if r["kind"] == "reproduced"]
    assert rows and all(r["miou_std"] == "" and r["gpu_hours"] == "" and r["n_seeds"] == "1" for r in rows)
    assert all(r["miou_ci_low"] == "" and r["ci_level"] == "" for r in rows)  # resamples=0: no bootstrap


def test_one_resample_is_still_a_bootstrap(tmp_path, write_run):
    root = tmp_path / "runs"
    record = json.loads(write_run(root, "rein", "dinov2_vitl14", seed=0, quality=0.6).read_text())
    merged = merge_into_csv(tmp_path / "lb.csv", load_records(root), AggregateOptions(resamples=1))
    rows = {r["target"]: r for r in merged if r["kind"] == "reproduced"}
    row = rows["Cityscapes"]
    with np.load(root / record["run_id"] / record["results"]["targets"]["cityscapes"]["confusion"]) as z:
        cms = z["confusion"][np.argsort(z["names"])]
    rng = np.random.default_rng(_seed("|".join([row[f] for f in GROUP_FIELDS] + ["Cityscapes"])))
    idx = rng.integers(0, 10, (1, 10))
    one_draw = _miou(cms[idx[0]].sum(0))
    assert row["ci_resamples"] == "1" and row["miou_ci_low"] == row["miou_ci_high"] == f"{one_draw:.2f}"


def test_seeds_without_common_images_get_no_interval_and_a_warning(tmp_path, write_run, capsys):
    root = tmp_path / "runs"
    write_run(root, "rein", "dinov2_vitl14", seed=0, quality=0.6)
    other = json.loads(write_run(root, "rein", "dinov2_vitl14", seed=1, quality=0.6).read_text())
    path = root / other["run_id"] / other["results"]["targets"]["cityscapes"]["confusion"]
    with np.load(path) as z:
        cms = z["confusion"]
    np.savez(path, names=np.asarray([f"elsewhere_{i}" for i in range(len(cms))]), confusion=cms)
    merged = merge_into_csv(tmp_path / "lb.csv", load_records(root), AggregateOptions(resamples=5))
    rows = {r["target"]: r for r in merged if r["kind"] == "reproduced"}
    assert rows["Cityscapes"]["miou_ci_low"] == "" and rows["Avg(C/B/M)"]["miou_ci_low"] == ""
    assert rows["BDD100K"]["miou_ci_low"] != ""
    err = capsys.readouterr().err
    assert err.count("warning: no bootstrap CI for reproduced/real/rein/dinov2_vitl14/gta2cbm/") == 1
    assert err.rstrip().endswith(
        "/Cityscapes: align_by_names: the confusion files share no image names ([10, 10] images)")


def test_other_level_and_an_average_over_other_runs(tmp_path, write_run):
    """A 90 % interval is the 5th-95th percentile of the same draws; an average row whose runs differ from its
    targets' runs (seed 1 has no Mapillary result: its own "Avg(C/B)" row) gets no interval."""
    root = tmp_path / "runs"
    write_run(root, "rein", "dinov2_vitl14", seed=0, quality=0.6)
    path = write_run(root, "rein", "dinov2_vitl14", seed=1, quality=0.7)
    record = json.loads(path.read_text())
    del record["results"]["targets"]["mapillary"]
    path.write_text(json.dumps(record))
    merged = merge_into_csv(tmp_path / "lb.csv", load_records(root), AggregateOptions(resamples=RESAMPLES, level=0.9))
    rows = {r["target"]: r for r in merged if r["kind"] == "reproduced"}
    row = rows["Mapillary"]  # seed 0 only
    seed0 = sorted(load_records(root), key=lambda r: r["seed"])[0]
    with np.load(root / seed0["run_id"] / seed0["results"]["targets"]["mapillary"]["confusion"]) as z:
        cms = z["confusion"][np.argsort(z["names"])]
    dist = _bootstrap([cms], _seed("|".join([row[f] for f in GROUP_FIELDS] + ["Mapillary"])))
    lo, hi = np.quantile(dist, [0.05, 0.95])
    assert (row["miou_ci_low"], row["miou_ci_high"], row["ci_level"]) == (f"{lo:.2f}", f"{hi:.2f}", "90")
    assert rows["Avg(C/B)"]["run_ids"] == seed0["run_id"].replace("-s0-", "-s1-")
    assert rows["Cityscapes"]["miou_ci_low"] != "" and rows["Avg(C/B)"]["miou_ci_low"] == ""
