"""How ``runners.sweep status`` reads each cell (a record with the cell's key first, then submitit's result
pickle, then the scheduler or the local process) and the table it prints, with every message written out. The
scheduler and the process checks are fakes; the manifests, records, pickles and logs are files in tmp_path."""

import json
import pickle
from types import SimpleNamespace

import pytest

from runners import sweep


@pytest.fixture
def world(monkeypatch, tmp_path):
    """A sweep folder, a fake Slurm (``world.slurm``: job id -> answer) and fake process checks."""
    w = SimpleNamespace(dir=tmp_path / "sw", slurm={}, slurm_calls=[], alive_jobs=set(), alive_pids=set(),
                        checked_jobs=[], cells={})

    def slurm_states(job_ids):
        w.slurm_calls.append(list(job_ids))
        return {j: w.slurm[j] for j in job_ids if j in w.slurm}

    def local_process_alive(job_id):
        w.checked_jobs.append(job_id)
        return job_id in w.alive_jobs

    monkeypatch.setattr(sweep, "slurm_states", slurm_states)
    monkeypatch.setattr(sweep, "local_process_alive", local_process_alive)
    monkeypatch.setattr(sweep, "_pid_alive", lambda pid: pid in w.alive_pids)
    w.dir.mkdir()
    return w


def _cell(w, key, *subs, record=None, labels=None):
    """A manifest entry; ``record``: the result record's fields (the key is added unless given)."""
    name = f"run-{key}"
    w.cells[key] = {"name": name, "run_dir": f"runs/{name}", "argv": ["--method", "m"], "labels": labels or {"k": key},
                    "kind": "run", "submissions": list(subs)}
    if record is not None:
        (w.dir / "runs" / name).mkdir(parents=True)
        (w.dir / "runs" / name / "result.json").write_text(json.dumps({"spec_hash": key, **record}))
    return w.cells[key]


def _sub(executor, job_id, *, result=None, stdout=None, stderr=None, **extra):
    """A submission; ``result``: (status, value) pickled where submitit would write it; logs: text of the files."""
    return {"executor": executor, "job_id": job_id, "stdout": stdout, "stderr": stderr, "result": result, **extra}


def _files(w, sub, key):
    """Write the result pickle and logs of ``sub`` (given as values) and replace them by their paths."""
    folder = w.dir / "submitit" / "s1"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("stdout", "stderr", "result"):
        if sub[name] is not None:
            path = folder / f"{key}.{name}"
            if name == "result":
                path.write_bytes(pickle.dumps(sub[name]))
            else:
                path.write_text(sub[name])
            sub[name] = f"submitit/s1/{key}.{name}"
    return sub


def _states(w, **kw):
    return {st.key: st for st in sweep.cell_statuses(w.dir, {"cells": w.cells}, **kw)}


def test_unsubmitted_and_done_cells(world):
    _cell(world, "k1")
    _cell(world, "k2", _sub("local", "111", stdout="out", stderr="err"), record={"results": {"mean_miou": 41.236}})
    _files(world, world.cells["k2"]["submissions"][0], "k2")
    _cell(world, "k3", record={"results": {}})  # a record without a score
    _cell(world, "k4", record={"results": {"mean_miou": 40}})
    _cell(world, "k5", record={"spec_hash": "another key", "results": {"mean_miou": 1.0}})  # another run's record
    _cell(world, "k6", record={})  # a record without results
    del _cell(world, "k7")["submissions"]  # an entry as Cell.to_dict writes it
    states = _states(world)
    assert [st.key for st in states.values()] == ["k1", "k2", "k3", "k4", "k5", "k6", "k7"]  # the manifest's order
    assert states["k1"].to_dict() == {
        "key": "k1", "name": "run-k1", "labels": {"k": "k1"}, "state": "unsubmitted", "executor": None,
        "job_id": None, "attempts": 0, "detail": "", "error": [], "run_dir": str(world.dir / "runs" / "run-k1"),
        "stdout": None, "stderr": None, "mean_miou": None}
    assert states["k2"].to_dict() == {
        "key": "k2", "name": "run-k2", "labels": {"k": "k2"}, "state": "done", "executor": "local", "job_id": "111",
        "attempts": 1, "detail": "mean mIoU 41.24", "error": [], "run_dir": str(world.dir / "runs" / "run-k2"),
        "stdout": str(world.dir / "submitit" / "s1" / "k2.stdout"),
        "stderr": str(world.dir / "submitit" / "s1" / "k2.stderr"), "mean_miou": 41.236}
    assert (states["k3"].state, states["k3"].detail, states["k3"].mean_miou) == ("done", "", None)
    assert (states["k4"].state, states["k4"].detail) == ("done", "mean mIoU 40.00")
    assert states["k5"].state == "unsubmitted"
    assert (states["k6"].state, states["k6"].detail, states["k6"].mean_miou) == ("done", "", None)
    assert (states["k7"].state, states["k7"].attempts) == ("unsubmitted", 0)
    assert world.slurm_calls == [] and world.checked_jobs == []  # no scheduler asked about finished cells


def test_the_manifest_is_read_from_the_folder_when_not_given(world):
    (world.dir / "manifest.json").write_text(json.dumps({"schema": 1, "cells": {}}))
    _cell(world, "k1", record={"results": {"mean_miou": 3.0}})
    manifest = json.loads((world.dir / "manifest.json").read_text())
    manifest["cells"] = world.cells
    (world.dir / "manifest.json").write_text(json.dumps(manifest))
    assert [(st.key, st.state) for st in sweep.cell_statuses(str(world.dir))] == [("k1", "done")]


def test_queued_and_running_cells(world):
    world.slurm = {"100_0": {"state": "running", "slurm": "RUNNING", "detail": "node3"},
                   "100_1": {"state": "pending", "slurm": "PENDING", "detail": ""},
                   "100_4": {"state": "pending", "slurm": "", "detail": "held"}}
    world.alive_jobs, world.alive_pids = {"222"}, {4242}
    _cell(world, "k1", _sub("local", "9"), _sub("slurm", "100_0"))  # the last submission counts
    _cell(world, "k2", _sub("slurm", "100_1"))
    _cell(world, "k3", _sub("slurm", "100_2"))  # the scheduler does not answer for it
    _cell(world, "k4", _sub("slurm", None))  # never got a job id
    _cell(world, "k5", _sub("local", "222"))
    _cell(world, "k6", _sub("local", None, scheduler_pid=4242))
    _cell(world, "k7", _sub("slurm", "100_3"), record={"results": {"mean_miou": 1.0}})
    _cell(world, "k8", _sub("slurm", "100_4"))
    states = _states(world)
    assert world.slurm_calls == [["100_0", "100_1", "100_2", "100_4"]]  # one query, live cells only
    got = {k: (st.state, st.detail, st.executor, st.job_id, st.attempts) for k, st in states.items()}
    assert got == {"k1": ("running", "RUNNING node3", "slurm", "100_0", 2),
                   "k2": ("pending", "PENDING", "slurm", "100_1", 1),
                   "k3": ("unknown", "not queried", "slurm", "100_2", 1),
                   "k4": ("unknown", "not queried", "slurm", None, 1),
                   "k5": ("running", "", "local", "222", 1),
                   "k6": ("pending", "queued by the local sweep process", "local", None, 1),
                   "k7": ("done", "mean mIoU 1.00", "slurm", "100_3", 1),
                   "k8": ("pending", "held", "slurm", "100_4", 1)}
    assert world.checked_jobs == ["222"]
    assert all(st.error == [] and st.mean_miou is None for k, st in states.items() if k != "k7")


def test_cells_that_ended_without_a_result(world):
    world.slurm = {"5_0": {"state": "ended", "slurm": "FAILED", "detail": "exit code 1"},
                   "5_1": {"state": "ended", "slurm": "", "detail": ""},
                   "5_2": {"state": "ended", "slurm": "TIMEOUT", "detail": ""}}
    err = "\n".join(f"e{i}" for i in range(20)) + "\n"
    _cell(world, "k1", _files(world, _sub("slurm", "5_0", stdout="o1\n", stderr=err), "k1"))
    _cell(world, "k2", _files(world, _sub("slurm", "5_1", stdout="only stdout\n", stderr=""), "k2"))
    _cell(world, "k3", _sub("local", "333"))  # the controller process is gone
    _cell(world, "k4", _sub("local", None, scheduler_pid=99))  # the sweep process that queued it is gone
    _cell(world, "k5", _sub("local", None))
    _cell(world, "k6", _files(world, _sub("slurm", "5_2", stderr="\n"), "k6"))
    states = _states(world)
    assert {k: st.state for k, st in states.items()} == dict.fromkeys(states, "failed")
    assert states["k1"].detail == "ended without a result (Slurm state FAILED, exit code 1)"
    assert states["k1"].error == [f"e{i}" for i in range(8, 20)]  # the last 12 lines of stderr
    assert states["k2"].detail == "ended without a result (no scheduler record)"
    assert states["k2"].error == ["only stdout"]  # an empty stderr: stdout's last lines
    assert states["k3"].detail == "ended without a result (no scheduler record)" and states["k3"].error == []
    ended = "ended without a result (no scheduler record, the local sweep process ended before starting this cell)"
    assert states["k4"].detail == ended and states["k5"].detail == ended
    assert states["k6"].detail == "ended without a result (Slurm state TIMEOUT)" and states["k6"].error == []
    assert world.checked_jobs == ["333"]


def test_cells_with_a_submitit_result(world):
    world.alive_jobs = {"3"}
    traceback = "Traceback (most recent call last):\n" + "\n".join(f"  frame {i}" for i in range(14)) + \
        "\n\nRuntimeError: out of memory\n"
    _cell(world, "k1", _files(world, _sub("local", "1", result=("error", traceback)), "k1"))
    _cell(world, "k2", _files(world, _sub("local", "2", result=("success", {"key": "k2"}), stderr="w1\nw2\n",
                                          stdout="o\n"), "k2"))
    _cell(world, "k3", _files(world, _sub("local", "3", result=("error", "boom")), "k3"))  # alive, yet it raised
    _cell(world, "k4", _files(world, _sub("local", "4", result=("success", {})), "k4"))
    states = _states(world)
    assert (states["k1"].state, states["k1"].detail) == ("failed", "the job raised an exception")
    assert states["k1"].error == [f"  frame {i}" for i in range(3, 14)] + ["RuntimeError: out of memory"]
    assert (states["k2"].state, states["k2"].detail) == \
        ("failed", "the job returned but wrote no result record with this key")
    assert states["k2"].error == ["w1", "w2"]
    assert (states["k3"].state, states["k3"].error) == ("failed", ["boom"])
    assert states["k4"].error == []  # no stderr: nothing (not stdout)
    assert world.checked_jobs == []  # a result answers before the process is looked at


def test_a_record_that_lands_while_the_state_is_read(world, monkeypatch):
    """The record is written just before the job ends: a second look finds it (but never after an error)."""
    world.slurm = {"8_0": {"state": "ended", "slurm": "COMPLETED", "detail": ""}}
    _cell(world, "k1", _sub("slurm", "8_0"))
    _cell(world, "k2", _files(world, _sub("local", "2", result=("success", {})), "k2"))
    _cell(world, "k3", _files(world, _sub("local", "3", result=("error", "raised after writing")), "k3"))
    looks = {}

    def record(sweep_dir, entry, key):
        looks[key] = looks.get(key, 0) + 1
        return None if looks[key] == 1 else {"spec_hash": key, "results": {"mean_miou": 7.5}}

    monkeypatch.setattr(sweep, "_record", record)
    states = _states(world)
    assert (states["k1"].state, states["k1"].mean_miou, states["k1"].detail) == ("done", 7.5, "")
    assert (states["k2"].state, states["k2"].mean_miou, states["k2"].detail) == ("done", 7.5, "")
    assert states["k3"].state == "failed" and states["k3"].mean_miou is None
    assert looks == {"k1": 2, "k2": 2, "k3": 1}


def test_a_result_that_lands_after_the_process_ended(world, monkeypatch):
    _cell(world, "k1", _sub("local", "1", result="submitit/s1/k1.result"))
    pickles = iter([None, ("error", "late")])
    monkeypatch.setattr(sweep, "_result_pickle", lambda sub, sweep_dir: next(pickles))
    state = _states(world)["k1"]
    assert (state.state, state.detail, state.error) == ("failed", "the job raised an exception", ["late"])


def test_records_without_a_score(world, monkeypatch):
    world.slurm = {"8_0": {"state": "ended", "slurm": "", "detail": ""}}
    _cell(world, "k1", _sub("slurm", "8_0"))
    _cell(world, "k2", _files(world, _sub("local", "2", result=("success", {})), "k2"))
    looks = {}

    def record(sweep_dir, entry, key):
        looks[key] = looks.get(key, 0) + 1
        return None if looks[key] == 1 else {"spec_hash": key}

    monkeypatch.setattr(sweep, "_record", record)
    assert [(st.state, st.mean_miou) for st in _states(world).values()] == [("done", None), ("done", None)]


# ============================================================================================== the table
def _status(key, name, labels, state, **kw):
    return sweep.CellStatus(key, name, labels, state, **kw)


def test_format_status_table_errors_and_counts():
    statuses = [
        _status("0123456789abcdef", "rein-a", {"method": "rein", "backbone": "vit_l", "protocol": "gta2cbm",
                                               "variant": "default", "seed": 0}, "done", job_id="100_0",
                detail="mean mIoU 41.24"),
        _status("fedcba9876543210", "tqdm-b", {"method": "tqdm", "backbone": "vit_b", "protocol": "city2bm",
                                               "variant": "v2", "seed": 12}, "failed", attempts=2,
                detail="the job raised an exception", error=["Traceback", "RuntimeError: x"], stdout="/s/o.out",
                stderr="/s/o.err"),
        _status("aaaaaaaaaaaaaaaa", "x", {}, "pending"),
    ]
    assert sweep.format_status(statuses) == "\n".join([
        "state    cell          method  backbone  protocol  variant  seed  job    detail",
        "-" * 79,
        "done     0123456789ab  rein    vit_l     gta2cbm   default  0     100_0  mean mIoU 41.24",
        "failed   fedcba987654  tqdm    vit_b     city2bm   v2       12    -      the job raised an exception",
        "pending  aaaaaaaaaaaa  None    None      None      None     None  -      ",
        "",
        "failed cell fedcba9876543210 (tqdm-b), attempt 2: the job raised an exception",
        "    Traceback",
        "    RuntimeError: x",
        "    logs: /s/o.out  /s/o.err",
        "",
        "3 cells: 1 done, 1 pending, 1 failed",
    ])
    brief = sweep.format_status(statuses, verbose_errors=False).splitlines()
    assert brief[5:] == ["", "3 cells: 1 done, 1 pending, 1 failed"]


def test_format_status_counts_in_state_order_and_logs_only_with_stderr():
    labels = {"method": "m", "backbone": "b", "protocol": "p", "variant": "v", "seed": 1}
    states = ["unknown", "failed", "unsubmitted", "running", "failed", "done", "running", "pending"]
    statuses = [_status(f"{i:016d}", f"n{i}", labels, s, job_id=i, detail="d") for i, s in enumerate(states)]
    statuses[1].stdout = "/only/stdout"  # no stderr: no logs line
    text = sweep.format_status(statuses)
    assert text.splitlines()[-1] == "8 cells: 1 done, 2 running, 1 pending, 2 failed, 1 unsubmitted, 1 unknown"
    assert "logs:" not in text and "failed cell 0000000000000001 (n1), attempt 0: d" in text
    assert text.splitlines()[2] == "unknown      000000000000  m       b         p         v        1     -    d"
    assert sweep.format_status([]) == "\n".join([
        "state  cell  method  backbone  protocol  variant  seed  job  detail", "-" * 67, "", "0 cells: "])
    assert sweep.STATES == ("done", "running", "pending", "failed", "unsubmitted", "unknown")
