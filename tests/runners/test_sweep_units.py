"""runners.sweep piece by piece, values written out by hand: the grid and its cells (seeds, planning order,
skip keys), the manifest, and how each cell's state is read (record first, then submitit's result, then the
scheduler). No training and no subprocess: the registry, ``runners.run`` and the scheduler are replaced by fakes."""

import fcntl
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from runners import sweep
from runners.options import UsageError


def _quiet(*_):
    pass


# ============================================================================================== cells
def test_cell_paths_dict_and_manifest_round_trip():
    cell = sweep.Cell("k1", "rein-gta2cbm-s0", ["--method", "rein"], {"seed": 0})
    assert cell.kind == "run" and cell.run_rel == "runs/rein-gta2cbm-s0"
    assert cell.to_dict() == {"name": "rein-gta2cbm-s0", "run_dir": "runs/rein-gta2cbm-s0",
                              "argv": ["--method", "rein"], "labels": {"seed": 0}, "kind": "run"}
    entry = {"name": "a", "run_dir": "runs/a", "argv": ["--x"], "labels": {"m": 1}}  # an entry without a kind
    back = sweep.Cell.from_manifest("k2", entry)
    assert (back.key, back.name, back.argv, back.labels, back.kind) == ("k2", "a", ["--x"], {"m": 1}, "run")
    assert back.argv is not entry["argv"] and back.labels is not entry["labels"]  # copies, not the manifest's
    selftest = sweep.Cell.from_manifest("k3", {**entry, "kind": "selftest"})
    assert selftest.kind == "selftest"


def test_grid_defaults():
    grid = sweep.Grid(methods=["rein"], protocols=["gta2cbm"])
    assert (grid.variants, grid.backbones, grid.seeds, grid.run_args, grid.kind) == (["default"], [], [0], [], "run")
    assert sweep.Grid(["a"], ["b"]).variants is not grid.variants  # no list shared between grids


def test_parse_seeds_forms_and_errors():
    assert sweep.parse_seeds(" 3 ") == [0, 1, 2]
    assert sweep.parse_seeds("1") == [0]
    assert sweep.parse_seeds("0") == []
    assert sweep.parse_seeds("0,4,7") == [0, 4, 7]
    assert sweep.parse_seeds("2, 5,") == [2, 5]
    assert sweep.parse_seeds("7") == [0, 1, 2, 3, 4, 5, 6]
    assert sweep.parse_seeds("5:8") == [5, 6, 7]
    assert sweep.parse_seeds(" 10:12") == [10, 11]
    assert sweep.parse_seeds("4:4") == []
    assert sweep.parse_seeds("-1") == [-1]  # not a count: a one-seed list
    for bad in ("a,b", "1:3,5", "1:2:3", "x:4", "three"):
        with pytest.raises(SystemExit) as exc:
            sweep.parse_seeds(bad)
        assert str(exc.value) == f"error: --seeds {bad!r}: use a count (3), a list (0,4,7) or a range (5:8)"


def test_split():
    assert sweep._split(None) == [] and sweep._split("") == []
    assert sweep._split(" rein, tqdm,,set ") == ["rein", "tqdm", "set"]
    assert sweep._split(" , ") == []


def test_log_once_passes_each_message_once_in_order():
    seen = []
    once = sweep.log_once(seen.append)
    for msg in ("a", "b", "a", "c", "b"):
        once(msg)
    assert seen == ["a", "b", "c"]
    other = sweep.log_once(seen.append)  # a new filter starts empty
    other("a")
    assert seen == ["a", "b", "c", "a"]


# a registry of two fake methods and two fake protocols; cell_from_argv replaced (keys = the argument list)
_METHODS = {"alpha": ("vit_l", "vit_b"), "beta": ("r50",)}
_PROTOCOLS = {"p1": ["default", "v2"], "p2": ["default"]}


@pytest.fixture
def planned(monkeypatch):
    import benchmarks.protocols as bp
    import methods.registry as mr

    monkeypatch.setattr(mr, "list_methods", lambda: list(_METHODS))
    monkeypatch.setattr(mr, "get_method_class", lambda m: SimpleNamespace(backbones=_METHODS[m]))
    monkeypatch.setattr(bp, "list_protocols", lambda: list(_PROTOCOLS))
    monkeypatch.setattr(bp, "list_variants", lambda p: _PROTOCOLS[p])
    calls = SimpleNamespace(argvs=[], parsers=[], key=lambda argv: " ".join(argv), error=None)

    def fake_cell(argv, parser, *, log):
        calls.argvs.append(list(argv))
        calls.parsers.append(parser)
        log("resolved the same way")
        if calls.error:
            raise UsageError(calls.error)
        return sweep.Cell(calls.key(argv), "n", argv, {})

    monkeypatch.setattr(sweep, "cell_from_argv", fake_cell)
    return calls


def test_plan_order_and_arguments_of_every_cell(planned):
    logged = []
    grid = sweep.Grid(methods=["beta", "alpha"], protocols=["p2", "p1"], variants=["default"], seeds=[3, 1],
                      backbones=["vit_b", "r50"], run_args=["--iters", "4"])
    cells = sweep.plan_cells(grid, log=logged.append)
    expected = [
        ["--method", "beta", "--backbone", "r50", "--protocol", "p2", "--eval-variant", "default", "--seed", "3",
         "--iters", "4"],
        ["--method", "beta", "--backbone", "r50", "--protocol", "p2", "--eval-variant", "default", "--seed", "1",
         "--iters", "4"],
        ["--method", "beta", "--backbone", "r50", "--protocol", "p1", "--eval-variant", "default", "--seed", "3",
         "--iters", "4"],
        ["--method", "beta", "--backbone", "r50", "--protocol", "p1", "--eval-variant", "default", "--seed", "1",
         "--iters", "4"],
        ["--method", "alpha", "--backbone", "vit_b", "--protocol", "p2", "--eval-variant", "default", "--seed",
         "3", "--iters", "4"],
        ["--method", "alpha", "--backbone", "vit_b", "--protocol", "p2", "--eval-variant", "default", "--seed",
         "1", "--iters", "4"],
        ["--method", "alpha", "--backbone", "vit_b", "--protocol", "p1", "--eval-variant", "default", "--seed",
         "3", "--iters", "4"],
        ["--method", "alpha", "--backbone", "vit_b", "--protocol", "p1", "--eval-variant", "default", "--seed",
         "1", "--iters", "4"],
    ]
    assert planned.argvs == expected and [c.argv for c in cells] == expected
    assert logged == ["resolved the same way"]  # the planning log says each message once
    # one parser (runners.run's) for every cell
    assert len({id(p) for p in planned.parsers}) == 1
    assert planned.parsers[0].prog == "run" or "--method" in planned.parsers[0]._option_string_actions


def test_plan_backbones_variants_and_seeds_left_to_the_profile(planned):
    cells = sweep.plan_cells(sweep.Grid(methods=["alpha"], protocols=["p1"], variants=[], seeds=[]), log=_quiet)
    assert [c.argv for c in cells] == [["--method", "alpha", "--backbone", "vit_l", "--protocol", "p1"]]
    planned.argvs.clear()
    sweep.plan_cells(sweep.Grid(methods=["alpha"], protocols=["p1"], variants=["v2", "default"],
                                backbones=["all"], seeds=[0]), log=_quiet)
    assert [(a[3], a[7]) for a in planned.argvs] == [("vit_l", "v2"), ("vit_l", "default"), ("vit_b", "v2"),
                                                     ("vit_b", "default")]
    planned.argvs.clear()
    sweep.plan_cells(sweep.Grid(methods=["all"], protocols=["all"], seeds=[0]), log=_quiet)
    assert [(a[1], a[3], a[5]) for a in planned.argvs] == [("alpha", "vit_l", "p1"), ("alpha", "vit_l", "p2"),
                                                           ("beta", "r50", "p1"), ("beta", "r50", "p2")]


def test_plan_keeps_the_first_cell_of_each_key(planned):
    planned.key = lambda argv: argv[1]  # every seed of a method resolves to one spec hash
    cells = sweep.plan_cells(sweep.Grid(methods=["alpha", "beta"], protocols=["p1"], seeds=[5, 6]), log=_quiet)
    assert [(c.key, c.argv[-1]) for c in cells] == [("alpha", "5"), ("beta", "5")]


def test_plan_errors_in_full(planned):
    def error(**grid):
        with pytest.raises(SystemExit) as exc:
            sweep.plan_cells(sweep.Grid(**{"methods": ["alpha"], "protocols": ["p1"], **grid}), log=_quiet)
        return str(exc.value)

    assert error(methods=["alpha", "gamma"]) == "error: unknown method 'gamma'; methods: alpha, beta"
    assert error(protocols=["p3"]) == "error: unknown protocol 'p3'; protocols: p1, p2"
    assert error(protocols=["p1", "p2"], variants=["v2"]) == \
        "error: protocol p2 has no evaluation variant 'v2'; variants: default"
    assert error(methods=["beta"], backbones=["vit_l", "vit_b"]) == \
        "error: beta supports backbones r50; none of vit_l, vit_b"
    assert error(backbones=["r50"]) == "error: alpha supports backbones vit_l, vit_b; none of r50"
    assert error(variants=["v9"]) == "error: protocol p1 has no evaluation variant 'v9'; variants: default, v2"
    assert planned.argvs == []  # every check before the first cell is resolved
    planned.error = "--iters must be positive (got 0)"
    assert error() == "error: --iters must be positive (got 0)"  # once, not "error: error: ..."


def _fake_resolved(**over):
    base = dict(method_class=SimpleNamespace(name="rein"), backbone="vit_l", seed=2, miniature=True,
                protocol=SimpleNamespace(name="gta2cbm", variant="default"), profile="harmonised",
                data_root=Path("/data/mini"), spec_hash="0123456789abcdef", out=Path("/somewhere/runs/rein-s2-0123"))
    return SimpleNamespace(**{**base, **over})


def test_cell_from_argv_keys_names_labels_and_data_root(monkeypatch):
    from runners import run as run_mod

    seen = {}

    def fake_resolve(args, *, log):
        seen["args"], seen["log"] = args, log
        return seen.get("resolved", _fake_resolved())

    monkeypatch.setattr(run_mod, "resolve", fake_resolve)
    argv = ["--method", "rein", "--seed", "2"]
    cell = sweep.cell_from_argv(argv, log=_quiet, released="ckpt-1", seed=9)
    assert (cell.key, cell.name, cell.kind) == ("0123456789abcdef", "rein-s2-0123", "run")
    assert cell.argv == ["--method", "rein", "--seed", "2", "--data-root", "/data/mini"]
    assert argv == ["--method", "rein", "--seed", "2"]  # the caller's list is left alone
    assert cell.labels == {"method": "rein", "backbone": "vit_l", "protocol": "gta2cbm", "variant": "default",
                           "seed": 9, "miniature": True, "profile": "harmonised", "released": "ckpt-1"}
    assert seen["log"] is _quiet and seen["args"].method == "rein" and seen["args"].seed == 2

    given = ["--method", "rein", "--data-root", "/mine"]
    assert sweep.cell_from_argv(given, log=_quiet).argv == given  # a data root already given is kept
    seen["resolved"] = _fake_resolved(miniature=False)
    assert sweep.cell_from_argv(argv, log=_quiet).argv == argv  # real data: the run finds its own root

    class Parser:
        def parse_args(self, argv):
            return SimpleNamespace(method="from my parser", seed=None, argv=argv)

    sweep.cell_from_argv(["--x"], Parser(), log=_quiet)
    assert seen["args"].method == "from my parser" and seen["args"].argv == ["--x"]


def test_cell_from_argv_logs_with_print_by_default(monkeypatch):
    from runners import run as run_mod

    seen = {}
    monkeypatch.setattr(run_mod, "resolve", lambda args, *, log: seen.setdefault("log", log) and _fake_resolved())
    sweep.cell_from_argv(["--method", "rein"])
    assert seen["log"] is print


def test_selftest_plan_names_keys_and_labels():
    grid = sweep.Grid(methods=["m1", "m2"], protocols=["p"], variants=[], seeds=[], run_args=["--iters", "2"],
                      kind="selftest")
    cells = sweep.plan_cells(grid, log=_quiet)
    argv = ["--method", "m1", "--backbone", "tiny", "--protocol", "p", "--eval-variant", "default", "--seed", "0",
            "--iters", "2"]
    key = hashlib.sha256(json.dumps({"selftest": argv}, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert [c.argv for c in cells][0] == argv and cells[0].key == key[:16]
    assert cells[0].name == f"m1-p-default-s0-{key[:8]}" and cells[0].kind == "selftest"
    assert cells[0].labels == {"method": "m1", "backbone": "tiny", "protocol": "p", "variant": "default", "seed": 0,
                               "miniature": True}
    assert [c.labels["method"] for c in cells] == ["m1", "m2"]
    grid = sweep.Grid(methods=["m"], protocols=["p", "q"], variants=["a", "b"], backbones=["x", "y"], seeds=[1, 2],
                      kind="selftest")
    order = [(c.labels["backbone"], c.labels["protocol"], c.labels["variant"], c.labels["seed"])
             for c in sweep.plan_cells(grid, log=_quiet)]
    assert order == [(b, p, v, s) for b in "xy" for p in "pq" for v in "ab" for s in (1, 2)]
    twice = sweep.Grid(methods=["m", "m"], protocols=["p"], kind="selftest")
    assert len(sweep.plan_cells(twice, log=_quiet)) == 1


# ============================================================================================== jobs
def test_set_threads(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    sweep._set_threads(None)
    sweep._set_threads(0)
    sweep._set_threads(3)
    assert calls == [3]


def test_cell_job_checkpoint_requeues_the_same_cell_with_resume(monkeypatch, capsys):
    monkeypatch.setattr(sweep, "now_iso", lambda: "T9")
    job = sweep.CellJob("k1", threads=4)
    assert (job.key, job.threads) == ("k1", 4) and sweep.CellJob("k2").threads is None
    argv = ("--method", "rein")
    delayed = job.checkpoint(argv)
    assert delayed.function is job and delayed.args == (["--method", "rein"],) and delayed.kwargs == {"resume": True}
    assert capsys.readouterr().out == ("[sweep] cell k1: preempted or timed out at T9; requeued, it will resume from "
                                       "its last checkpoint\n")
    assert sweep.JOB_KINDS == {"run": sweep.CellJob, "selftest": sweep.SelfTestJob}


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """runners.run and runners.distributed replaced: what CellJob does with them is recorded."""
    from runners import distributed
    from runners import run as run_mod

    calls = SimpleNamespace(events=[], record={"results": {"mean_miou": 41.5}}, spec_hash="k1",
                            info=SimpleNamespace(rank=0, world_size=1, is_main=True), out=tmp_path / "run")

    class MainFirst:
        def __enter__(self):
            calls.events.append("main_first")

        def __exit__(self, *exc):
            calls.events.append("main_first done")

    monkeypatch.setattr(distributed, "main_first", MainFirst)
    monkeypatch.setattr(distributed, "init_from_environment", lambda: calls.events.append("init") or calls.info)
    monkeypatch.setattr(distributed, "cleanup", lambda: calls.events.append("cleanup"))
    monkeypatch.setattr(run_mod, "check_arguments", lambda args: calls.events.append(("check", args.resume)))

    def resolve(args, log=print):
        calls.events.append(("resolve", args.method, args.resume))
        return SimpleNamespace(spec_hash=calls.spec_hash, out=calls.out)

    def guarded_execute(run, args):
        assert run.spec_hash == calls.spec_hash and run.out == calls.out  # the resolved run
        calls.events.append(("execute", args.resume))
        return calls.record

    monkeypatch.setattr(run_mod, "resolve", resolve)
    monkeypatch.setattr(run_mod, "guarded_execute", guarded_execute)
    return calls


def test_cell_job_runs_the_cell_and_resumes_when_asked(fake_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "now_iso", lambda: "T0")
    job = sweep.CellJob("k1")
    out = job(("--method", "rein"))
    assert out == {"key": "k1", "record": str(tmp_path / "run" / "result.json"), "mean_miou": 41.5}
    assert fake_run.events == ["init", ("check", False), "main_first", ("resolve", "rein", False), "main_first done",
                               ("execute", False), "cleanup"]
    assert capsys.readouterr().out == f"[sweep] cell k1: starting at T0 (rank 0 of 1, pid {os.getpid()})\n"

    fake_run.events.clear()
    fake_run.info = SimpleNamespace(rank=1, world_size=2, is_main=False)
    assert job(["--method", "rein"], resume=True) == {"key": "k1", "rank": 1}  # other ranks return their rank
    assert fake_run.events == ["init", ("check", True), "main_first", ("resolve", "rein", True), "main_first done",
                               ("execute", True), "cleanup"]
    assert capsys.readouterr().out == f"[sweep] cell k1: resuming at T0 (rank 1 of 2, pid {os.getpid()})\n"


def test_cell_job_of_a_finished_run_reads_its_record(fake_run, tmp_path):
    fake_run.record = None  # guarded_execute: finished by an earlier attempt
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text(json.dumps({"results": {"mean_miou": 12.25}}))
    assert sweep.CellJob("k1")(["--method", "rein"])["mean_miou"] == 12.25
    fake_run.record = {"results": {}}
    assert sweep.CellJob("k1")(["--method", "rein"])["mean_miou"] is None
    fake_run.record = {}
    assert sweep.CellJob("k1")(["--method", "rein"])["mean_miou"] is None


def test_cell_job_refuses_a_cell_that_resolves_to_another_key_and_cleans_up(fake_run):
    fake_run.spec_hash = "k9"
    with pytest.raises(RuntimeError) as exc:
        sweep.CellJob("k1")(["--method", "rein"])
    assert str(exc.value) == ("cell k1: the run now resolves to spec hash k9 (the code or a recipe changed since the "
                              "sweep was planned); re-run the sweep command to plan the new cells")
    assert fake_run.events[-1] == "cleanup" and ("execute", False) not in fake_run.events


def test_cell_job_sets_its_threads_first(fake_run, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: fake_run.events.append(("threads", n)))
    sweep.CellJob("k1", threads=3)(["--method", "rein"])
    assert fake_run.events[:2] == [("threads", 3), "init"]


def test_every_line_a_job_prints_is_flushed(fake_run, tmp_path, monkeypatch):
    """A job's stdout is a file (submitit's log): each line must reach it before the job is killed or requeued."""
    printed = []
    monkeypatch.setattr(sweep, "print", lambda *a, **kw: printed.append(kw), raising=False)
    monkeypatch.setattr(sweep.time, "sleep", lambda s: None)
    job = sweep.CellJob("k1")
    job(["--method", "rein"])
    job.checkpoint(["--method", "rein"])
    ckpt = tmp_path / "st" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text(json.dumps({"iteration": 1}))
    sweep.SelfTestJob("k2")(["--method", "m", "--out", str(tmp_path / "st"), "--iters", "2"], resume=True)
    assert printed == [{"flush": True}] * 5  # start, requeue; selftest: start, resuming, iteration 2/2


def _selftest(tmp_path, *extra, key="k1", resume=False):
    argv = ["--method", "m", "--backbone", "b", "--protocol", "p", "--eval-variant", "v", "--out",
            str(tmp_path / "out"), *extra]
    return sweep.SelfTestJob(key)._run(argv, resume, None)


@pytest.fixture
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(sweep.time, "sleep", slept.append)
    monkeypatch.setattr(sweep, "now_iso", lambda: "T1")
    return slept


def test_selftest_job_trains_checkpoints_and_records(tmp_path, no_sleep, capsys):
    out = _selftest(tmp_path, "--seed", "3", "--iters", "2", "--iter-seconds", "0.5")
    record_file = tmp_path / "out" / "result.json"
    assert out == {"key": "k1", "record": str(record_file), "mean_miou": 18.9}  # 10 + (3 * 7919 % 97) / 10
    assert no_sleep == [0.5, 0.5]
    assert json.loads((tmp_path / "out" / "checkpoints" / "last.pt").read_text()) == {"iteration": 2, "key": "k1"}
    assert capsys.readouterr().out == "iteration 1/2\niteration 2/2\n"
    assert json.loads(record_file.read_text()) == {
        "schema": sweep.RECORD_SCHEMA, "run_id": "out", "created": "T1", "spec_hash": "k1", "method": "m",
        "backbone": "b", "protocol": "p", "eval_variant": "v", "seed": 3, "miniature": True, "benchmark": "selftest",
        "train": {"iterations": 2, "resumed_from": None}, "results": {"mean_miou": 18.9}}


def test_selftest_job_defaults(tmp_path, no_sleep):
    assert _selftest(tmp_path)["mean_miou"] == 10.0  # seed 0
    assert no_sleep == [0.1, 0.1, 0.1]  # 3 iterations of 0.1 s
    assert _selftest(tmp_path, "--seed", "50")["mean_miou"] == 19.3  # 50 * 7919 % 97 = 93


def test_selftest_job_resumes_from_its_checkpoint(tmp_path, no_sleep, capsys):
    ckpt = tmp_path / "out" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text(json.dumps({"iteration": 2, "key": "k1"}))
    _selftest(tmp_path, "--iters", "3", resume=True)
    assert capsys.readouterr().out == f"resuming from {ckpt} at iteration 2\niteration 3/3\n"
    assert json.loads((tmp_path / "out" / "result.json").read_text())["train"] == {"iterations": 3,
                                                                                  "resumed_from": 2}
    ckpt.write_text(json.dumps({"iteration": 2, "key": "k1"}))
    _selftest(tmp_path, "--iters", "3")  # not resuming: from scratch
    assert capsys.readouterr().out == "iteration 1/3\niteration 2/3\niteration 3/3\n"
    ckpt.unlink()
    _selftest(tmp_path, "--iters", "1", resume=True)  # resuming without a checkpoint: from scratch
    assert capsys.readouterr().out == "iteration 1/1\n"


def test_selftest_job_injected_failures(tmp_path, no_sleep):
    with pytest.raises(RuntimeError, match="^selftest: injected failure of cell k1$"):
        _selftest(tmp_path, "--fail-first", "--iters", "1")
    assert (tmp_path / "out" / ".selftest_failed_once").exists()
    _selftest(tmp_path, "--fail-first", "--iters", "1")  # the second attempt passes
    for _ in range(2):
        with pytest.raises(RuntimeError):
            _selftest(tmp_path, "--fail", "--iters", "1")
    with pytest.raises(RuntimeError):
        _selftest(tmp_path / "b", "--fail-seed", "4", "--seed", "4", "--iters", "1")
    _selftest(tmp_path / "c", "--fail-seed", "4", "--seed", "5", "--iters", "1")  # another seed
    with pytest.raises(RuntimeError):
        _selftest(tmp_path / "e", "--fail-seed", "0", "--iters", "1")
    _selftest(tmp_path / "e", "--fail-seed", "0", "--iters", "1")


def test_selftest_job_call_prints_and_runs(tmp_path, no_sleep, capsys):
    argv = ("--method", "m", "--out", str(tmp_path / "out"), "--iters", "1")
    assert sweep.SelfTestJob("k5")(argv)["key"] == "k5"
    assert capsys.readouterr().out.splitlines()[0] == f"[sweep] cell k5: starting at T1 (pid {os.getpid()})"
    sweep.SelfTestJob("k5")(argv, resume=True)
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"[sweep] cell k5: resuming at T1 (pid {os.getpid()})",
        f"resuming from {tmp_path / 'out' / 'checkpoints' / 'last.pt'} at iteration 1"]


# ============================================================================================== manifest
def test_manifest_path_and_a_fresh_manifest(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "now_iso", lambda: "T2")
    assert sweep.manifest_path(str(tmp_path)) == tmp_path / "manifest.json"
    assert sweep.load_manifest(tmp_path) == {"schema": 1, "created": "T2", "invocations": [], "executor": {},
                                             "cells": {}}


def test_manifest_errors_in_full(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        sweep.load_manifest(tmp_path)
    assert str(exc.value) == (f"error: {path} is not valid JSON (Expecting property name enclosed in double quotes: "
                              "line 1 column 2 (char 1)); restore it or start a new sweep folder")
    path.write_text(json.dumps({"schema": 2, "cells": {}}))
    with pytest.raises(SystemExit) as exc:
        sweep.load_manifest(tmp_path)
    assert str(exc.value) == f"error: {path} has manifest schema 2, expected 1"
    path.write_text(json.dumps({"cells": {}}))
    with pytest.raises(SystemExit, match="has manifest schema None, expected 1$"):
        sweep.load_manifest(tmp_path)
    path.write_text(json.dumps({"schema": 1, "cells": {"a": {}}}))
    assert sweep.load_manifest(tmp_path) == {"schema": 1, "cells": {"a": {}}}


def test_edit_manifest_writes_under_an_exclusive_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "now_iso", lambda: "T3")
    folder = tmp_path / "new" / "sweep"
    with sweep.edit_manifest(str(folder)) as manifest:
        manifest["cells"]["k"] = {"name": "n"}
        with open(folder / ".manifest.lock", "a") as other:  # another command waits for the lock
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert not (folder / "manifest.json").exists()  # written when the block ends
    assert json.loads((folder / "manifest.json").read_text()) == {
        "schema": 1, "created": "T3", "invocations": [], "executor": {}, "cells": {"k": {"name": "n"}},
        "updated": "T3"}
    with open(folder / ".manifest.lock", "a") as other:  # released
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(KeyError):  # an error inside the block writes nothing
        with sweep.edit_manifest(folder) as manifest:
            manifest["cells"]["j"] = {}
            raise KeyError("x")
    assert list(json.loads((folder / "manifest.json").read_text())["cells"]) == ["k"]


# ============================================================================================== state
def test_cell_status_defaults_and_dict():
    st = sweep.CellStatus("k", "n", {"seed": 0}, "done")
    assert st.to_dict() == {"key": "k", "name": "n", "labels": {"seed": 0}, "state": "done", "executor": None,
                            "job_id": None, "attempts": 0, "detail": "", "error": [], "run_dir": "", "stdout": None,
                            "stderr": None, "mean_miou": None}
    assert sweep.CellStatus("k", "n", {}, "done").error is not st.error


def test_record_is_read_only_when_it_carries_the_cell_key(tmp_path):
    entry = {"run_dir": "runs/a"}
    assert sweep._record(tmp_path, entry, "k") is None  # no file
    (tmp_path / "runs" / "a").mkdir(parents=True)
    path = tmp_path / "runs" / "a" / "result.json"
    path.write_text("{half")
    assert sweep._record(str(tmp_path), entry, "k") is None
    path.write_text(json.dumps({"spec_hash": "other"}))
    assert sweep._record(tmp_path, entry, "k") is None
    path.write_text(json.dumps({"mean": 1}))
    assert sweep._record(tmp_path, entry, "k") is None
    path.write_text(json.dumps({"spec_hash": "k", "v": 2}))
    assert sweep._record(str(tmp_path), entry, "k") == {"spec_hash": "k", "v": 2}


def test_tail_gives_the_last_non_blank_lines(tmp_path):
    assert sweep._tail(None) == [] and sweep._tail("") == [] and sweep._tail(tmp_path / "missing") == []
    path = tmp_path / "log"
    path.write_text("\n".join(f"line {i}" for i in range(30)) + "\n\n   \n")
    assert sweep._tail(path) == [f"line {i}" for i in range(18, 30)]  # 12 by default
    assert sweep._tail(str(path), 3) == ["line 27", "line 28", "line 29"]
    path.write_bytes(b"first\n" + b"x" * 16384 + b"\nlast \xff\n")  # only the last 16 KiB are read
    assert sweep._tail(path) == ["x" * (16384 - 8), "last \ufffd"]
    path.write_bytes(b"a\n" + b"y" * 16383)  # 16385 bytes: the read starts at the newline
    assert sweep._tail(path) == ["y" * 16383]
    path.write_bytes(b"a\n" + b"y" * 16382)
    assert sweep._tail(path) == ["a", "y" * 16382]
    assert sweep.ERROR_LINES == 12


def test_result_pickle(tmp_path):
    assert sweep._result_pickle({}, tmp_path) is None and sweep._result_pickle({"result": ""}, tmp_path) is None
    assert sweep._result_pickle({"result": "sub/r.pkl"}, tmp_path) is None  # not written yet
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.pkl").write_bytes(pickle.dumps(("success", {"key": "k"})))
    assert sweep._result_pickle({"result": "sub/r.pkl"}, str(tmp_path)) == ("success", {"key": "k"})
    (tmp_path / "sub" / "r.pkl").write_bytes(b"\x80\x04trunc")
    status, message = sweep._result_pickle({"result": "sub/r.pkl"}, tmp_path)
    assert status == "error" and message == f"unreadable submitit result {tmp_path / 'sub' / 'r.pkl'}: " \
                                            "could not find MARK"


def test_abs():
    assert sweep._abs(Path("/s"), None) is None and sweep._abs(Path("/s"), "") is None
    assert sweep._abs("/s", "a/b.out") == "/s/a/b.out"


def test_pid_alive_sends_signal_0(monkeypatch):
    sent = []
    monkeypatch.setattr(sweep.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    sweep._pid_alive("123")
    assert sent == [(123, 0)]  # signal 0 only asks whether the process exists


def test_pid_alive(tmp_path):
    assert sweep._pid_alive(os.getpid()) and sweep._pid_alive(str(os.getpid()))
    assert not sweep._pid_alive("not a pid")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not sweep._pid_alive(child.pid)  # ended and reaped
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped: a zombie
    try:
        assert not sweep._pid_alive(zombie.pid)
    finally:
        zombie.wait()


def test_pid_alive_without_proc(monkeypatch):
    def unreadable(self, *a, **k):
        raise OSError("no /proc here")

    monkeypatch.setattr(Path, "read_text", unreadable)
    assert sweep._pid_alive(os.getpid())  # signal 0 answered: alive
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "123 (python)")
    assert sweep._pid_alive(os.getpid())  # a stat line without a state: alive
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "123 (a) b) Z 1")
    assert not sweep._pid_alive(os.getpid())  # the state follows the last ')'
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "123 (a) Z) S 1")
    assert sweep._pid_alive(os.getpid())
