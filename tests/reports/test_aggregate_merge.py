"""reports.aggregate: leaderboard.csv rows, idempotent and order-independent merging."""

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.protocols import get_protocol
from reports.aggregate import (
    COLUMNS,
    AggregateOptions,
    main,
    merge_into_csv,
    read_leaderboard,
    render_csv,
    write_leaderboard,
)
from reports.reported import load_reported
from runners.records import load_records

OPTS = AggregateOptions(resamples=100)


def aggregate(csv_path: Path, *roots: Path) -> str:
    records = [r for root in roots for r in load_records(root)]
    write_leaderboard(csv_path, merge_into_csv(csv_path, records, OPTS))
    return csv_path.read_text()


def reproduced(csv_path: Path) -> dict[tuple, dict[str, str]]:
    return {(r["benchmark"], r["method_id"], r["variant"], r["protocol"], r["target"]): r
            for r in read_leaderboard(csv_path) if r["kind"] == "reproduced"}


METHODS = [("rein", "dinov2_vitl14", 0.80, 2_990_000, 9.0), ("tqdm", "eva02_clip_vitl14", 0.84, 310_000_000, 14.0),
           ("frozen_m2f", "dinov2_vitl14", 0.72, 20_000_000, 6.0)]


@pytest.fixture
def split_runs(tmp_path: Path, write_run) -> dict[str, Path]:
    """The same experiments spread over three folders: seed 0, seed 1, and other protocols/benchmarks."""
    root = tmp_path / "runs"
    for method, backbone, q, trainable, hours in METHODS:
        for seed in (0, 1):
            write_run(root / f"seed{seed}", method, backbone, seed=seed, quality=q + 0.01 * seed,
                           trainable=trainable, hours=hours)
    write_run(root / "other", "rein", "dinov2_vitl14", benchmark="miniature", device="cpu")
    write_run(root / "other", "rein", "dinov2_vitl14", quality=0.8, protocol=get_protocol("city2bm"))
    return {"a": root / "seed0", "b": root / "seed1", "c": root / "other"}


def test_published_rows_seed_an_empty_csv(tmp_path):
    csv_path = tmp_path / "leaderboard.csv"
    assert main(["--csv", str(csv_path)]) == 0
    rows = read_leaderboard(csv_path)
    cells = load_reported()
    assert len(rows) == len(cells) and all(r["kind"] == "reported" for r in rows)
    assert [(r["method"], r["target"], r["reported_miou"], r["reported_ref"]) for r in rows] == [
        (c.method, c.target, c.text, c.reference) for c in cells]
    first = rows[0]
    assert first["protocol"] == "gta2cbm" and first["variant"] == "paper" and first["protocol_hash"] == ""
    assert "reported.csv line 2" in first["reported_source"]
    assert csv_path.read_text().splitlines()[0] == ",".join(COLUMNS)


def test_aggregation_is_idempotent(tmp_path, split_runs):
    csv_path = tmp_path / "leaderboard.csv"
    first = aggregate(csv_path, *split_runs.values())
    assert aggregate(csv_path, *split_runs.values()) == first  # same records again: same bytes
    assert aggregate(csv_path) == first  # no records: recomputed from the ledgers, same bytes
    roots = [str(p) for p in split_runs.values()]
    assert main(["--csv", str(csv_path), "--resamples", "100", *roots]) == 0  # the command line: real rows only
    assert main(["--csv", str(csv_path), "--check", "--resamples", "100", *roots]) == 0
    assert main(["--csv", str(csv_path), "--check", "--resamples", "100"]) == 0


def test_aggregation_is_order_independent(tmp_path, split_runs):
    a, b, c = split_runs["a"], split_runs["b"], split_runs["c"]
    one, two, three, four = (tmp_path / f"{n}.csv" for n in ("one", "two", "three", "four"))
    for root in (a, b, c):
        aggregate(one, root)
    for root in (c, b, a):
        aggregate(two, root)
    aggregate(three, a, b, c)
    records = load_records(a) + load_records(b) + load_records(c)
    write_leaderboard(four, merge_into_csv(four, list(reversed(records)), OPTS))
    assert one.read_text() == two.read_text() == three.read_text() == four.read_text()


def test_reproduced_rows_aggregate_seeds(tmp_path, split_runs):
    csv_path = tmp_path / "leaderboard.csv"
    aggregate(csv_path, *split_runs.values())
    rows = reproduced(csv_path)
    rein = rows[("real", "rein", "default", "gta2cbm", "Cityscapes")]
    per_seed = [load_records(split_runs[k])[i] for k in ("a", "b") for i in range(3)]
    values = sorted(r["results"]["targets"]["cityscapes"]["miou"] for r in per_seed if r["method"] == "rein")
    assert rein["n_seeds"] == "2" and rein["seeds"] == "0;1"
    assert float(rein["miou_mean"]) == pytest.approx(sum(values) / 2, abs=0.006)
    assert float(rein["miou_std"]) == pytest.approx(abs(values[1] - values[0]) / 2 ** 0.5, abs=0.006)
    assert float(rein["miou_ci_low"]) < float(rein["miou_ci_high"])
    assert rein["ci_level"] == "95" and rein["ci_resamples"] == "100"
    assert rein["reported_miou"] == "66.40" and rein["reported_ref"] == "tqdmT1"
    assert "ReinRD 66.7" in rein["reported_alternatives"]
    assert float(rein["delta_vs_reported"]) == pytest.approx(float(rein["miou_mean"]) - 66.40, abs=0.011)
    assert rein["trainable_params"] == "2990000" and float(rein["gpu_hours"]) == pytest.approx(9.45)
    assert rein["rank_group"].startswith("real|gta2cbm|default|") and rein["rank"] in {"1", "2", "3"}
    assert len(rein["run_ids"].split(";")) == 2 and rein["code_commits"] == "abc123"
    per_class = json.loads(rein["per_class_iou"])
    assert list(per_class)[:3] == ["road", "sidewalk", "building"] and len(per_class) == 19
    avg = rows[("real", "rein", "default", "gta2cbm", "Avg(C/B/M)")]
    assert avg["reported_miou"] == "64.30" and avg["per_class_iou"] == "" and avg["miou_ci_low"]
    mini = rows[("miniature", "rein", "default", "gta2cbm", "Cityscapes")]
    assert mini["reported_miou"] == "" and mini["delta_vs_reported"] == "" and mini["gpu_hours"] == ""
    assert mini["protocol_hash"] != rein["protocol_hash"]
    city = rows[("real", "rein", "default", "city2bm", "BDD100K")]
    assert city["source"] == "Cityscapes" and city["reported_miou"] == "65.00"


def test_rerun_of_a_seed_replaces_the_older_run(tmp_path, split_runs, write_run):
    csv_path = tmp_path / "leaderboard.csv"
    aggregate(csv_path, split_runs["a"])
    before = reproduced(csv_path)[("real", "rein", "default", "gta2cbm", "Cityscapes")]
    newer = write_run(tmp_path / "rerun", "rein", "dinov2_vitl14", seed=0, quality=0.5, run_suffix="-rerun",
                      created="2026-12-01T00:00:00+00:00", hours=9.0)
    aggregate(csv_path, tmp_path / "rerun")
    after = reproduced(csv_path)[("real", "rein", "default", "gta2cbm", "Cityscapes")]
    assert after["n_seeds"] == "1" and after["run_ids"] == json.loads(newer.read_text())["run_id"]
    assert float(after["miou_mean"]) < float(before["miou_mean"])
    assert len(json.loads(after["seed_values"])) == 2  # the ledger keeps both runs


def test_rows_survive_when_run_folders_are_gone(tmp_path, split_runs):
    csv_path = tmp_path / "leaderboard.csv"
    first = aggregate(csv_path, *split_runs.values())
    for folder in split_runs.values():
        shutil.rmtree(folder)
    assert aggregate(csv_path) == first  # ledgers carry the values; the CI is kept for the same run ids


def test_unknown_columns_are_refused(tmp_path):
    bad = tmp_path / "leaderboard.csv"
    bad.write_text("kind,foo\nreported,1\n")
    with pytest.raises(ValueError, match="unknown columns"):
        read_leaderboard(bad)


def test_render_csv_has_no_time_dependent_content(tmp_path, split_runs):
    csv_path = tmp_path / "leaderboard.csv"
    text = aggregate(csv_path, split_runs["a"])
    assert render_csv(read_leaderboard(csv_path)) == text
    for row in read_leaderboard(csv_path):  # creation times live only in the per-run ledger
        assert not any("2026-" in v for k, v in row.items() if k != "seed_values")


def test_profiles_are_a_column_and_never_pooled_as_seeds(tmp_path, write_run):
    """A released-profile run and a harmonised one of the same cell are two rows (runners.profiles); records
    written before profiles existed count as harmonised."""
    root = tmp_path / "runs"
    write_run(root, "rein", "dinov2_vitl14", seed=0, quality=0.8)
    released = write_run(root, "rein", "dinov2_vitl14", seed=0, quality=0.6, run_suffix="-rel")
    record = json.loads(released.read_text())
    record["profile"] = "released"
    released.write_text(json.dumps(record))
    aggregate(tmp_path / "leaderboard.csv", root)
    rows = [r for r in read_leaderboard(tmp_path / "leaderboard.csv")
            if r["kind"] == "reproduced" and r["target"] == "Cityscapes"]
    assert sorted((r["profile"], r["n_seeds"]) for r in rows) == [("harmonised", "1"), ("released", "1")]
    assert rows[0]["rank_group"] != rows[1]["rank_group"]
    assert "profile" in COLUMNS


def test_command_line_keeps_miniature_records_out_of_the_tracked_csv(tmp_path, split_runs, capsys):
    csv_path = tmp_path / "leaderboard.csv"
    assert main(["--csv", str(csv_path), "--resamples", "0", *map(str, split_runs.values())]) == 0
    assert {r["benchmark"] for r in read_leaderboard(csv_path)} == {"real"}
    mini = read_leaderboard(tmp_path / "leaderboard_miniature.csv")
    assert mini and {(r["kind"], r["benchmark"]) for r in mini} == {("reproduced", "miniature")}
    assert "1 record(s)" in capsys.readouterr().out  # the miniature file counts its own records
    # a tracked CSV that already holds miniature rows (written by an older version) is cleaned
    write_leaderboard(csv_path, merge_into_csv(csv_path, [r for root in split_runs.values()
                                                          for r in load_records(root)], OPTS))
    assert "miniature" in {r["benchmark"] for r in read_leaderboard(csv_path)}
    assert main(["--csv", str(csv_path), "--resamples", "0", "--check"]) == 1
    assert main(["--csv", str(csv_path), "--resamples", "0"]) == 0
    assert {r["benchmark"] for r in read_leaderboard(csv_path)} == {"real"}
