"""reports.aggregate from a result record to the ledger and back: the row identity and ledger entry of each
target (``record_entries``), the training-config hash, the ledgers rebuilt from CSV rows, the confusion-file
cache and ``merge_into_csv``'s filtering, skipping and identity updates. Every expected row, entry and message
is written out by hand from the records below."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reports.aggregate import (
    COLUMNS,
    AggregateOptions,
    _bool,
    _config_hash,
    _ConfusionCache,
    _json,
    _ledgers_from_rows,
    _protocol_targets,
    _rel,
    _row_key,
    group_key,
    merge_into_csv,
    record_benchmark,
    record_entries,
    reported_rows,
    write_leaderboard,
)
from reports.reported import ReportedCell, load_reported
from runners.records import content_hash

SETTINGS = {"source": {"key": "gta5"}, "targets": [{"key": "cityscapes"}, {"key": "bdd100k"}, {"key": "mapillary"}]}
SETTINGS_JSON = ('{"source":{"key":"gta5"},"targets":[{"key":"cityscapes"},{"key":"bdd100k"},'
                 '{"key":"mapillary"}]}')
CONFIG_HASH = "1be9f061"  # of {"model": {"backbone": "x"}, "recipe": {"iterations": 10}, "scale": "paper"}


def make_record(tmp_path: Path | None, run_id: str = "r1", **over) -> dict:
    """A record as runners.run writes it, reduced to what the aggregation reads (``_path`` as load_records
    sets it). Bookkeeping recipe keys (log/checkpoint interval, source) must not change the config hash."""
    record = {
        "run_id": run_id, "seed": 3, "created": "2026-11-01T00:00:00+00:00",
        "method": "rein", "backbone": "dinov2_vitl14", "protocol": "gta2cbm", "protocol_hash": "abcd",
        "benchmark": "real", "pretrained": True,
        "spec": {"protocol": SETTINGS, "model": {"backbone": "x"}, "scale": "paper",
                 "recipe": {"iterations": 10, "log_interval": 5, "checkpoint_interval": 2, "source": "gta5"}},
        "params": {"trainable": 7, "total": 21},
        "environment": {"device": "cuda", "gpu_count": 2, "git": {"commit": "c0ffee"}},
        "timings": {"total_s": 1800.0},
        "results": {
            "targets": {
                "mapillary": {"miou": 40.1234567, "per_class_iou": {"road": 90.123456, "sky": 80.0},
                              "confusion": "eval/confusion_mapillary.npz"},
                "cityscapes": {"miou": 50.0, "confusion": ""},
                "xtarget": {"miou": 1.0},  # not a target of the protocol: left out
            },
            "mean_miou": 45.0617284, "mean_rpd": 50.5, "reference": {"key": "gta5", "miou": 80.0000004},
            "rpd": {"cityscapes": 62.5, "mapillary": 50.1543208},
        },
    }
    if tmp_path is not None:
        record["_path"] = str(tmp_path / "runs" / run_id / "result.json")
    record.update(over)
    return record


BASE_IDENTITY = {
    "kind": "reproduced", "checkpoint": "", "profile": "harmonised", "reported_lines": "", "benchmark": "real",
    "method_id": "rein", "backbone_id": "dinov2_vitl14", "protocol": "gta2cbm", "variant": "default",
    "protocol_hash": "abcd", "config_hash": CONFIG_HASH, "pretrained": "true", "method": "Rein",
    "backbone": "DINOv2-L", "source": "GTA5", "protocol_settings": SETTINGS_JSON,
}
COMMON = {"run_id": "r1", "seed": 3, "created": "2026-11-01T00:00:00+00:00", "path": "runs/r1/result.json",
          "trainable": 7, "total": 21, "gpu_hours": 1.0, "commit": "c0ffee"}  # 1800 s x 2 GPUs = 1 GPU-hour


def test_record_entries_in_full(tmp_path):
    pairs = record_entries(make_record(tmp_path), tmp_path)
    conf = "runs/r1/eval/confusion_mapillary.npz"
    assert pairs == [
        ({**BASE_IDENTITY, "target": "Cityscapes", "target_key": "cityscapes"},
         {**COMMON, "miou": 50.0, "rpd": 62.5, "source_miou": 80.0, "per_class": {}, "confusion": ""}),
        ({**BASE_IDENTITY, "target": "Mapillary", "target_key": "mapillary"},  # bdd100k has no result: no row
         {**COMMON, "miou": 40.123457, "rpd": 50.154321, "source_miou": 80.0,
          "per_class": {"road": 90.1235, "sky": 80.0}, "confusion": conf}),
        ({**BASE_IDENTITY, "target": "Avg(C/M)", "target_key": "__avg__"},
         {**COMMON, "miou": 45.061728, "rpd": 50.5, "source_miou": 80.0, "per_class": {},
          "confusion": {"cityscapes": "", "mapillary": conf}}),
    ]


def test_record_entries_of_a_released_checkpoint(tmp_path):
    spec = {**make_record(None)["spec"], "profile": "released"}
    record = make_record(tmp_path, spec=spec, eval_variant="rein", pretrained=None,
                         released={"id": "rein-dinov2-gta5", "reported_lines": [23, 24]})
    ident, entry = record_entries(record, tmp_path)[0]
    payload = {"model": {"backbone": "x"}, "recipe": {"iterations": 10}, "scale": "paper", "profile": "released"}
    assert ident == {**BASE_IDENTITY, "kind": "released", "checkpoint": "rein-dinov2-gta5", "profile": "released",
                     "reported_lines": "23;24", "variant": "rein", "config_hash": content_hash(payload, 8),
                     "pretrained": "", "target": "Cityscapes", "target_key": "cityscapes"}
    assert entry["reported_lines"] == [23, 24] and entry["run_id"] == "r1"
    # the record's own profile wins over its spec's
    assert record_entries({**record, "profile": "other"}, tmp_path)[0][0]["profile"] == "other"
    released_no_lines = {**record, "released": {"id": "x"}}
    ident, entry = record_entries(released_no_lines, tmp_path)[0]
    assert ident["reported_lines"] == "" and entry["reported_lines"] == []
    no_id = {**record, "released": {"reported_lines": [23]}}
    assert record_entries(no_id, tmp_path)[0][0]["checkpoint"] == ""
    # the backbone as the method's own published rows write it (Rein: "EVA02-L"; tqdm: "EVA02-CLIP-L/14")
    eva = {**record, "backbone": "eva02_clip_vitl14"}
    assert record_entries(eva, tmp_path)[0][0]["backbone"] == "EVA02-L"
    assert record_entries({**eva, "method": "tqdm"}, tmp_path)[0][0]["backbone"] == "EVA02-CLIP-L/14"


def test_record_entries_fallbacks(tmp_path):
    # no _path: no record or confusion paths; no GPU, no params, no git: empty entries, not errors
    record = make_record(None, environment={"device": "cpu"}, params=None, pretrained=False)
    del record["created"], record["seed"]
    ident, entry = record_entries(record, tmp_path)[1]
    assert ident["pretrained"] == "false"
    assert entry == {"run_id": "r1", "seed": None, "created": "", "path": "", "trainable": None, "total": None,
                     "gpu_hours": None, "commit": None, "miou": 40.123457, "rpd": 50.154321, "source_miou": 80.0,
                     "per_class": {"road": 90.1235, "sky": 80.0}, "confusion": ""}
    # settings without targets: the record's own targets in its order; no mean: no average row
    spec = {**record["spec"], "protocol": {"source": {"key": "gta5"}}}
    results = {**record["results"], "mean_miou": None, "reference": None, "rpd": None}
    pairs = record_entries({**record, "spec": spec, "results": results}, tmp_path)
    assert [(i["target"], i["target_key"], e["rpd"], e["source_miou"]) for i, e in pairs] == [
        ("Mapillary", "mapillary", None, None), ("Cityscapes", "cityscapes", None, None),
        ("xtarget", "xtarget", None, None)]
    # no target of the protocol in the results: nothing, not even an average row
    none = {**record["results"], "targets": {"xtarget": {"miou": 1.0}}}
    assert record_entries({**record, "results": none}, tmp_path) == []
    # the variant defaults to "default", a record without a benchmark is real unless it is a miniature run
    assert record_entries(record, tmp_path)[0][0]["variant"] == "default"


def test_record_without_protocol_settings_names_the_file(tmp_path):
    record = make_record(tmp_path)
    record["spec"] = {"model": {}}
    with pytest.raises(ValueError) as err:
        record_entries(record, tmp_path)
    assert str(err.value) == (f"{tmp_path}/runs/r1/result.json: record has no spec.protocol "
                              "(written by an older runner?)")
    with pytest.raises(ValueError, match="^None: record has no spec.protocol"):
        record_entries({"run_id": "x"}, tmp_path)


def test_config_hash_payload():
    record = make_record(None)
    assert _config_hash(record) == CONFIG_HASH == content_hash(
        {"model": {"backbone": "x"}, "recipe": {"iterations": 10}, "scale": "paper"}, 8)
    harmonised = {**record, "spec": {**record["spec"], "profile": "harmonised"}}
    assert _config_hash(harmonised) == CONFIG_HASH  # harmonised hashes stay those of older records
    other = {**record, "spec": {**record["spec"], "recipe": {"iterations": 11, "log_interval": 5}}}
    assert _config_hash(other) == content_hash({"model": {"backbone": "x"}, "recipe": {"iterations": 11},
                                                "scale": "paper"}, 8)
    assert _config_hash({}) == _config_hash({"spec": None}) == content_hash(
        {"model": None, "recipe": {}, "scale": None}, 8) == "b8d6c80b"


def test_small_record_helpers(tmp_path):
    assert _json(None) == "" and _json({"b": [1, 2], "a": "é"}) == '{"a":"é","b":[1,2]}'
    assert _json({}) == "{}"
    assert _bool(None) == "" and _bool(True) == "true" and _bool(0) == "false" and _bool("") == "false"
    assert _rel(tmp_path / "a" / "b" / "c.json", tmp_path / "a") == "b/c.json"
    assert _rel(tmp_path / "x" / "y.npz", tmp_path / "a") == "../x/y.npz"
    assert _protocol_targets(SETTINGS) == ["cityscapes", "bdd100k", "mapillary"] and _protocol_targets({}) == []
    assert record_benchmark({"benchmark": "x", "miniature": True}) == "x"
    assert record_benchmark({"miniature": True}) == record_benchmark({"benchmark": "", "miniature": 1}) == "miniature"
    assert record_benchmark({}) == record_benchmark({"miniature": False}) == "real"


def test_reported_rows_in_full():
    cell = ReportedCell("Rein", "DINOv2-L", "GTA5", "Cityscapes", "66.40", "tqdmT1", "a note", 2, "row")
    assert reported_rows([cell]) == [{
        "kind": "reported", "benchmark": "real", "method": "Rein", "backbone": "DINOv2-L", "protocol": "gta2cbm",
        "variant": "paper", "source": "GTA5", "target": "Cityscapes", "reported_miou": "66.40",
        "reported_ref": "tqdmT1", "reported_source": cell.provenance()}]
    assert "reported.csv line 2; a note" in cell.provenance()
    assert reported_rows([]) == []
    assert [r["reported_miou"] for r in reported_rows()] == [c.text for c in load_reported()]


def test_group_key_and_row_key():
    row = {"kind": "reproduced", "benchmark": "real", "method_id": "m", "backbone_id": "b", "protocol": "p",
           "variant": "v", "protocol_hash": "h", "config_hash": "c", "pretrained": "true", "checkpoint": "k",
           "target": "T", "method": "ignored"}
    assert group_key(row) == ("reproduced", "real", "m", "b", "p", "v", "h", "c", "true", "harmonised", "k")
    assert _row_key(row) == group_key(row) + ("T",)
    assert group_key({**row, "profile": "released"})[9] == "released"
    assert group_key({**row, "profile": ""})[9] == "harmonised"
    assert group_key({}) == ("",) * 9 + ("harmonised", "") and _row_key({}) == ("",) * 9 + ("harmonised", "", "")


def _csv_row(target, seed_values, settings=SETTINGS_JSON, **over):
    row = {c: "" for c in COLUMNS}
    row.update({"kind": "reproduced", "benchmark": "real", "method": "Rein", "backbone": "DINOv2-L",
                "method_id": "rein", "backbone_id": "dinov2_vitl14", "protocol": "gta2cbm", "variant": "default",
                "protocol_hash": "abcd", "config_hash": "cfg", "pretrained": "true", "source": "GTA5",
                "target": target, "protocol_settings": settings, "seed_values": seed_values})
    row.update(over)
    return row


def test_ledgers_rebuilt_from_csv_rows():
    a = {"run_id": "a", "miou": 1.0, "reported_lines": [23]}
    b = {"run_id": "b", "miou": 2.0, "reported_lines": [24, 25]}
    rows = [
        _csv_row("Cityscapes", json.dumps([a, b])),
        _csv_row("Avg(C/B/M)", json.dumps([a]), profile="released"),
        _csv_row("Foo", "[]", settings=""),  # no settings: the target name is its key
        _csv_row("Mapillary", "", ),  # no ledger: not rebuilt
        _csv_row("Cityscapes", json.dumps([a]), kind="reported"),
    ]
    ledgers = _ledgers_from_rows(rows)
    group = ("reproduced", "real", "rein", "dinov2_vitl14", "gta2cbm", "default", "abcd", "cfg", "true")
    assert list(ledgers) == [group + ("harmonised", "", "Cityscapes"), group + ("released", "", "Avg(C/B/M)"),
                             group + ("harmonised", "", "Foo")]
    city, avg, foo = ledgers.values()
    assert city == {"identity": {
        "method": "Rein", "backbone": "DINOv2-L", "source": "GTA5", "target": "Cityscapes",
        "protocol_settings": SETTINGS_JSON, "kind": "reproduced", "benchmark": "real", "method_id": "rein",
        "backbone_id": "dinov2_vitl14", "protocol": "gta2cbm", "variant": "default", "protocol_hash": "abcd",
        "config_hash": "cfg", "pretrained": "true", "profile": "harmonised", "checkpoint": "",
        "reported_lines": "24;25", "target_key": "cityscapes"}, "entries": {"a": a, "b": b}}
    assert avg["identity"]["target_key"] == "__avg__" and avg["identity"]["profile"] == "released"
    assert avg["identity"]["reported_lines"] == "23"
    assert foo["identity"]["target_key"] == "Foo" and foo["identity"]["reported_lines"] == "" and foo["entries"] == {}
    bad_targets = _csv_row("Avg(x)", json.dumps([a]), settings='{"targets": 5}')
    assert next(iter(_ledgers_from_rows([bad_targets]).values()))["identity"]["target_key"] == "__avg__"


def test_confusion_cache(tmp_path, capsys):
    np.savez(tmp_path / "ok.npz", names=np.asarray(["b", "a"]), confusion=np.arange(8).reshape(2, 2, 2))
    (tmp_path / "bad.npz").write_text("not a zip file")
    cache = _ConfusionCache(tmp_path)
    assert cache.get("") is None and cache.get("missing.npz") is None
    assert capsys.readouterr().err == ""  # a missing file is no warning (the row keeps its old CI)
    names, cms = cache.get("ok.npz")
    assert names == ["b", "a"] and cms.tolist() == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    assert cache.get("bad.npz") is None
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and err.count("\n") == 1 and "pickled" in err
    (tmp_path / "ok.npz").unlink()
    assert cache.get("ok.npz")[0] == ["b", "a"]  # read once
    assert cache.get("bad.npz") is None and capsys.readouterr().err == ""  # warned once


def test_merge_skips_bad_records_and_keeps_the_newest_identity(tmp_path, capsys):
    old = make_record(tmp_path, run_id="r-a", spec={**make_record(None)["spec"],
                                                    "protocol": {**SETTINGS, "description": "old"}})
    new = make_record(tmp_path, run_id="r-b", spec={**make_record(None)["spec"],
                                                    "protocol": {**SETTINGS, "description": "new"}})
    old["_path"], new["_path"] = str(tmp_path / "z" / "result.json"), str(tmp_path / "a" / "result.json")
    broken = make_record(tmp_path, run_id="r-c", results={})  # KeyError("targets")
    no_spec = {"run_id": "A-d"}
    no_id = make_record(tmp_path, run_id="x")
    del no_id["run_id"]
    csv_path = tmp_path / "lb.csv"
    for records in ([old, new, broken, no_spec, no_id], [no_id, no_spec, broken, new, old]):
        # the records are real-benchmark ones: none is read for the miniature file
        assert merge_into_csv(csv_path, records, AggregateOptions(resamples=0), benchmark="miniature") == []
        assert capsys.readouterr().err == ""
        rows = merge_into_csv(csv_path, records, AggregateOptions(resamples=0))
        assert capsys.readouterr().err == (  # in run id order, a missing run id first
            f"warning: skipping record {tmp_path}/runs/x/result.json: KeyError('run_id')\n"
            "warning: skipping record A-d: ValueError('None: record has no spec.protocol (written by an older "
            "runner?)')\n"
            f"warning: skipping record {tmp_path}/runs/r-c/result.json: KeyError('targets')\n")
        reproduced = [r for r in rows if r["kind"] == "reproduced"]
        assert [r["kind"] for r in rows] == ["reported"] * len(load_reported()) + ["reproduced"] * 3
        assert [r["target"] for r in reproduced] == ["Cityscapes", "Mapillary", "Avg(C/M)"]
        # one seed (3): the newer run id of the two counts; the identity is the last merged (larger run id)
        assert all(r["run_ids"] == "r-b" and r["seeds"] == "3" for r in reproduced)
        assert all('"description":"new"' in r["protocol_settings"] for r in reproduced)
        assert [e["run_id"] for e in json.loads(reproduced[0]["seed_values"])] == ["r-a", "r-b"]


def test_merge_with_a_benchmark_drops_the_other_ones_rows(tmp_path, capsys):
    csv_path = tmp_path / "lb.csv"
    real, mini = make_record(tmp_path, run_id="real"), make_record(tmp_path, run_id="mini", benchmark="miniature")
    write_leaderboard(csv_path, merge_into_csv(csv_path, [real, mini], AggregateOptions(resamples=0)))
    assert capsys.readouterr().err == ""
    rows = merge_into_csv(csv_path, [], AggregateOptions(resamples=0), benchmark="real")
    assert capsys.readouterr().err == (f"warning: {csv_path}: dropping 3 row(s) that are not real-benchmark "
                                       "results\n")
    assert {(r["kind"], r["benchmark"]) for r in rows} == {("reported", "real"), ("reproduced", "real")}
    assert sum(r["kind"] == "reproduced" for r in rows) == 3
    rows = merge_into_csv(csv_path, [real, mini], AggregateOptions(resamples=0), benchmark="miniature")
    assert capsys.readouterr().err == (f"warning: {csv_path}: dropping 3 row(s) that are not miniature-benchmark "
                                       "results\n")
    assert [(r["kind"], r["benchmark"], r["run_ids"]) for r in rows] == [("reproduced", "miniature", "mini")] * 3
    # the existing rows' ledgers are merged with new records (order-independent), their CI kept for the same runs
    both = merge_into_csv(csv_path, [], AggregateOptions(resamples=0))
    assert [(r["benchmark"], r["target"]) for r in both if r["kind"] == "reproduced"] == [
        ("real", "Cityscapes"), ("real", "Mapillary"), ("real", "Avg(C/M)"),
        ("miniature", "Cityscapes"), ("miniature", "Mapillary"), ("miniature", "Avg(C/M)")]


def test_merge_keeps_the_previous_interval_of_the_same_runs(tmp_path):
    csv_path = tmp_path / "lb.csv"
    rows = merge_into_csv(csv_path, [make_record(tmp_path)], AggregateOptions(resamples=0))
    city = next(r for r in rows if r["kind"] == "reproduced" and r["target"] == "Cityscapes")
    city.update({"miou_ci_low": "49.00", "miou_ci_high": "51.00", "ci_level": "90", "ci_resamples": "7"})
    write_leaderboard(csv_path, rows)
    again = {r["target"]: r for r in merge_into_csv(csv_path, [], AggregateOptions(resamples=0))
             if r["kind"] != "reported"}
    assert [again["Cityscapes"][c] for c in ("miou_ci_low", "miou_ci_high", "ci_level", "ci_resamples")] == [
        "49.00", "51.00", "90", "7"]
    assert again["Mapillary"]["miou_ci_low"] == ""
    # a new run in the row: the old interval no longer describes it
    newer = make_record(tmp_path, run_id="r2", seed=4)
    again = {r["target"]: r for r in merge_into_csv(csv_path, [newer], AggregateOptions(resamples=0))
             if r["kind"] != "reported"}
    assert again["Cityscapes"]["run_ids"] == "r1;r2" and again["Cityscapes"]["miou_ci_low"] == ""


def _seed_record(tmp_path, run_id, seed, city, mapi, mean, rpd, mean_rpd, ref, per_class, **over):
    targets = {"cityscapes": {"miou": city, "per_class_iou": per_class}, "mapillary": {"miou": mapi}}
    results = {"targets": targets, "mean_miou": mean, "mean_rpd": mean_rpd, "reference": {"miou": ref},
               "rpd": {"cityscapes": rpd[0], "mapillary": rpd[1]}}
    return make_record(tmp_path, run_id=run_id, seed=seed, results=results, **over)


def test_reproduced_rows_in_full(tmp_path):
    a = _seed_record(tmp_path, "ra", 3, 50.0, 40.0, 45.0, (62.5, 50.0), 56.25, 80.0,
                     {"zébra": 1.0, "sky": 80.0, "road": 90.0, "aaa": 2.0})
    b = _seed_record(tmp_path, "rb", 4, 53.0, 44.0, 48.5, (66.5, 55.0), 60.75, 82.0, {"road": 91.0, "sky": 81.0},
                     params={"trainable": 9, "total": 20},
                     environment={"device": "cuda", "gpu_count": 1, "git": {"commit": "abc"}})
    rows = [r for r in merge_into_csv(tmp_path / "lb.csv", [b, a], AggregateOptions(resamples=0))
            if r["kind"] == "reproduced"]
    assert [r["target"] for r in rows] == ["Cityscapes", "Mapillary", "Avg(C/M)"]
    city, mapi, avg = rows
    same = {**{c: "" for c in COLUMNS}, **{k: v for k, v in BASE_IDENTITY.items() if k in COLUMNS},
            "n_seeds": "2", "seeds": "3;4", "source_miou": "81.00", "gpu_hours": "0.7500",  # (1 h + 0.5 h) / 2
            "run_ids": "ra;rb", "code_commits": "abc;c0ffee", "trainable_params": "9", "total_params": "21",
            "rank": "1"}
    seed_values = city["seed_values"]
    assert [(e["run_id"], e["miou"]) for e in json.loads(seed_values)] == [("ra", 50.0), ("rb", 53.0)]
    provenance = city["reported_source"]
    assert provenance.startswith("tqdmT1 (") and provenance.endswith("; reported.csv line 13; avg=64.30")
    assert city == {**same, "target": "Cityscapes", "seed_values": seed_values, "reported_source": provenance,
                    "miou_mean": "51.50", "miou_std": "2.12",  # sqrt(4.5)
                    "rpd_mean": "64.50", "rpd_std": "2.83", "rank_group": "real|gta2cbm|default|abcd|Cityscapes",
                    "per_class_iou": '{"road":90.5,"sky":80.5,"aaa":2.0,"zébra":1.0}',  # Cityscapes order, then names
                    "reported_miou": "66.40", "reported_ref": "tqdmT1",
                    "reported_alternatives": "ReinRD 66.7 (line 23)",
                    "delta_vs_reported": "-14.90"}
    assert {k: mapi[k] for k in ("miou_mean", "miou_std", "rpd_mean", "rpd_std", "per_class_iou", "reported_miou",
                                 "reported_alternatives", "delta_vs_reported")} == {
        "miou_mean": "42.00", "miou_std": "2.83", "rpd_mean": "52.50", "rpd_std": "3.54", "per_class_iou": "",
        "reported_miou": "66.10", "reported_alternatives": "", "delta_vs_reported": "-24.10"}
    assert [e["run_id"] for e in json.loads(avg["seed_values"])] == ["ra", "rb"]
    # runs without parameter counts: empty cells
    rows = merge_into_csv(tmp_path / "lb.csv", [{**a, "params": None}], AggregateOptions(resamples=0))
    assert {(r["trainable_params"], r["total_params"]) for r in rows if r["kind"] == "reproduced"} == {("", "")}
    assert avg == {**same, "target": "Avg(C/M)", "seed_values": avg["seed_values"], "miou_mean": "46.75",
                   "miou_std": "2.47", "rpd_mean": "58.50", "rpd_std": "3.18",
                   "rank_group": "real|gta2cbm|default|abcd|Avg(C/M)"}  # nothing published for Avg(C/M)


def test_ledger_paths_are_relative_to_the_csv_folder_not_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    rows = merge_into_csv(tmp_path / "board" / "lb.csv", [make_record(tmp_path)], AggregateOptions(resamples=0))
    entries = json.loads([r for r in rows if r["kind"] == "reproduced"][1]["seed_values"])  # Mapillary
    assert (entries[0]["path"], entries[0]["confusion"]) == ("../runs/r1/result.json",
                                                             "../runs/r1/eval/confusion_mapillary.npz")
    rows = merge_into_csv(Path("lb.csv"), [make_record(tmp_path)], AggregateOptions(resamples=0))  # a bare name
    entries = json.loads(next(r["seed_values"] for r in rows if r["kind"] == "reproduced"))
    assert entries[0]["path"] == "../runs/r1/result.json"


def test_the_same_run_in_two_folders_counts_once_whatever_the_order(tmp_path):
    """Records with one run id (a run copied elsewhere, a record without its path): the larger path is merged
    last and wins, in any input order."""
    def with_city(record, miou):
        record["results"] = {**record["results"], "targets": {"cityscapes": {"miou": miou}}}
        return record

    runs = with_city(make_record(tmp_path), 50.0)
    copy = with_city(make_record(tmp_path), 55.0)
    copy["_path"] = str(tmp_path / "copy" / "r1" / "result.json")
    no_path = with_city(make_record(None), 60.0)
    for records in ([runs, copy, no_path], [no_path, copy, runs], [copy, runs, no_path]):
        rows = merge_into_csv(tmp_path / "lb.csv", records, AggregateOptions(resamples=0))
        assert all(isinstance(v, str) for r in rows for v in r.values())  # published rows too: text, never None
        city = next(r for r in rows if r["kind"] == "reproduced" and r["target"] == "Cityscapes")
        assert (city["miou_mean"], city["n_seeds"]) == ("50.00", "1")
        assert [e["path"] for e in json.loads(city["seed_values"])] == ["runs/r1/result.json"]


def test_published_alternatives_come_from_the_table_loaded_once(tmp_path, monkeypatch):
    import reports.aggregate as agg

    def cell(text, line, origin="row", ref="tqdmT1"):
        return ReportedCell("Rein", "DINOv2-L", "GTA5", "Cityscapes", text, ref, "", line, origin)

    cells = [cell("61.0", 41, "note"), cell("60.0", 40), cell("66.40", 13), cell("1.0", 9, ref="ReinRD")]
    monkeypatch.setattr(agg, "load_reported", lambda: cells)
    rows = merge_into_csv(tmp_path / "lb.csv", [make_record(tmp_path)], AggregateOptions(resamples=0))
    assert [r["reported_miou"] for r in rows if r["kind"] == "reported"] == ["61.0", "60.0", "66.40", "1.0"]
    city = next(r for r in rows if r["kind"] == "reproduced" and r["target"] == "Cityscapes")
    assert (city["reported_miou"], city["reported_ref"], city["delta_vs_reported"]) == ("66.40", "tqdmT1", "-16.40")
    assert city["reported_alternatives"] == "tqdmT1 60.0 (line 40); tqdmT1 61.0 (line 41); ReinRD 1.0 (line 9)"
