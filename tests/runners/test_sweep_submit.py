"""Submission, the local scheduler, waiting, ``--resubmit-failed`` and ``run_cells`` (what is skipped, what is
submitted fresh, what resumes), with a fake submitit executor: every manifest entry, argument list, log line and
exit code written out."""

import contextlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from runners import sweep
from runners.slurm import ExecutorSettings


class FakeJob:
    def __init__(self, job_id, folder, polls, on_done=None):
        self.job_id, self.polls, self.on_done, self.cancelled = job_id, polls, on_done, False
        self.paths = SimpleNamespace(stdout=folder / f"{job_id}_log.out", stderr=folder / f"{job_id}_log.err",
                                     result_pickle=folder / f"{job_id}_result.pkl")

    def done(self):
        self.polls -= 1
        if self.polls == 0 and self.on_done:
            self.on_done()
        return self.polls <= 0

    def cancel(self):
        self.cancelled = True


class FakeExecutor:
    """submitit's executor: ``submit`` records (job, argv, resume) and the manifest on disk at that moment."""

    def __init__(self, world, settings, folder, num_cells):
        self.world, self.folder = world, folder
        world.executors.append({"settings": settings, "folder": folder, "num_cells": num_cells})
        self.in_batch = False

    @contextlib.contextmanager
    def batch(self):
        self.in_batch = True
        yield
        self.in_batch = False

    def submit(self, fn, argv, resume):
        w = self.world
        if w.refuse:
            raise RuntimeError(w.refuse)
        assert self.in_batch == (w.settings_executor == "slurm")
        job_id = w.job_ids.pop(0)
        w.events.append(("submit", fn.key))
        w.submitted.append({"job": fn, "argv": argv, "resume": resume,
                            "manifest": json.loads((w.dir / "manifest.json").read_text())})
        key = fn.key
        polls, score = w.plan.get(key, (1, 1.0))

        def finish():
            w.events.append(("done", key))
            if score is not None:
                run = w.dir / "runs" / f"run-{key}"
                run.mkdir(parents=True, exist_ok=True)
                results = {} if score == "no score" else {"mean_miou": score}
                (run / "result.json").write_text(json.dumps({"spec_hash": key, "results": results}))

        job = FakeJob(job_id, self.folder, polls, finish)
        w.jobs.append(job)
        return job


@pytest.fixture
def world(monkeypatch, tmp_path):
    w = SimpleNamespace(dir=tmp_path / "sw", executors=[], submitted=[], events=[], jobs=[], refuse=None, plan={},
                        job_ids=[], settings_executor="local", sleeps=[], log=[])

    def make_executor(settings, folder, *, num_cells):
        w.settings_executor = settings.executor
        return FakeExecutor(w, settings, folder, num_cells)

    def sleep(s):
        w.sleeps.append(s)
        w.events.append(("sleep", s))

    monkeypatch.setattr(sweep, "make_executor", make_executor)
    monkeypatch.setattr(sweep.time, "sleep", sleep)
    monkeypatch.setattr(sweep.time, "strftime", lambda fmt: fmt)
    monkeypatch.setattr(sweep.secrets, "token_hex", lambda n: f"hex{n}")
    monkeypatch.setattr(sweep, "now_iso", lambda: "T")
    monkeypatch.setattr(sweep, "local_process_alive", lambda job_id: False)
    monkeypatch.setattr(sweep, "slurm_states", lambda ids: {})
    return w


def _cells(*keys, kind="run"):
    return [sweep.Cell(k, f"run-{k}", ["--method", "m", "--seed", str(i)], {"seed": i}, kind=kind)
            for i, k in enumerate(keys)]


FOLDER = "submitit/%Y%m%d-%H%M%S-hex3"  # time.strftime and secrets.token_hex(3) are fakes that echo their input


def _entry(w, job_id, resume, executor="local"):
    return {"executor": executor, "job_id": job_id, "submitted": "T", "resume": resume, "folder": FOLDER,
            "stdout": f"{FOLDER}/{job_id}_log.out", "stderr": f"{FOLDER}/{job_id}_log.err",
            "result": f"{FOLDER}/{job_id}_result.pkl"}


def test_nothing_to_submit(world):
    assert sweep.submit_cells(world.dir, [], ExecutorSettings(), resume=False) is None
    assert world.executors == [] and not world.dir.exists()


def test_slurm_submission_is_one_array_recorded_in_the_manifest(world, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    world.job_ids = ["555_0", "555_1"]
    settings = ExecutorSettings(executor="slurm", cpus_per_task=4)
    with sweep.edit_manifest(world.dir) as m:  # k1 was submitted before
        m["cells"]["k1"] = {**_cells("k1")[0].to_dict(), "submissions": [{"executor": "slurm", "job_id": "9"}]}
    out = sweep.submit_cells(Path("sw"), _cells("k1", "k2"), settings, resume=True, log=world.log.append)
    assert out is None
    folder = world.dir / FOLDER
    assert world.executors == [{"settings": settings, "folder": folder, "num_cells": 2}]
    job = world.submitted[0]["job"]
    assert type(job) is sweep.CellJob and (job.key, job.threads) == ("k1", 4)
    assert [(s["argv"], s["resume"]) for s in world.submitted] == [
        (["--method", "m", "--seed", "0", "--out", str(world.dir / "runs" / "run-k1"), "--no-progress"], True),
        (["--method", "m", "--seed", "1", "--out", str(world.dir / "runs" / "run-k2"), "--no-progress"], True)]
    manifest = json.loads((world.dir / "manifest.json").read_text())
    assert manifest["executor"] == settings.to_dict()
    assert manifest["cells"]["k1"]["submissions"] == [{"executor": "slurm", "job_id": "9"},
                                                     _entry(world, "555_0", True, "slurm")]
    assert manifest["cells"]["k2"] == {**_cells("k1", "k2")[1].to_dict(),
                                       "submissions": [_entry(world, "555_1", True, "slurm")]}
    assert world.submitted[0]["manifest"]["executor"] == {}  # stored once the submission went through
    assert world.log == [f"submitted 2 cell(s) as Slurm job array 555 (at most 2 at once); logs under {folder}"]
    assert world.sleeps == []  # returns at once

    world.job_ids, world.log = ["556_0"], []
    capped = ExecutorSettings(executor="slurm", max_parallel=8)
    sweep.submit_cells(world.dir, _cells("k3"), capped, resume=False, log=world.log.append)
    assert world.log == [f"submitted 1 cell(s) as Slurm job array 556 (at most 8 at once); logs under {folder}"]
    assert world.submitted[-1]["resume"] is False


def test_refused_slurm_submission(world):
    world.refuse = "sbatch: error: invalid partition specified: gpux\n"
    with pytest.raises(SystemExit) as exc:
        sweep.submit_cells(world.dir, _cells("k1", "k2"), ExecutorSettings(executor="slurm"), resume=False)
    assert str(exc.value) == (
        "error: Slurm refused the submission of 2 cell(s): sbatch: error: invalid partition specified: gpux\n"
        "fix the executor settings, then re-run the sweep command or "
        f"`python -m runners.sweep status {world.dir} --resubmit-failed`")
    manifest = json.loads((world.dir / "manifest.json").read_text())
    assert manifest["executor"] == {}
    assert {k: c["submissions"] for k, c in manifest["cells"].items()} == {"k1": [], "k2": []}  # unsubmitted


def test_local_scheduler_runs_at_most_max_parallel_cells(world):
    world.job_ids = ["101", "102", "103"]
    world.plan = {"k1": (1, 41.0), "k2": (3, None), "k3": (1, 5.0)}  # k2 runs 3 polls and writes no record
    with sweep.edit_manifest(world.dir) as m:  # a cell of another command in the same folder
        m["cells"]["k0"] = {**_cells("k0")[0].to_dict(), "submissions": []}
    settings = ExecutorSettings(max_parallel=2, cpus_per_task=2)
    statuses = sweep.submit_cells(world.dir, _cells("k1", "k2", "k3", kind="selftest"), settings, resume=False,
                                  log=world.log.append, poll_s=0.25)
    assert world.events == [("submit", "k1"), ("submit", "k2"), ("sleep", 0.25), ("done", "k1"), ("submit", "k3"),
                            ("sleep", 0.25), ("done", "k3"), ("sleep", 0.25), ("done", "k2")]
    assert type(world.submitted[0]["job"]) is sweep.SelfTestJob and world.submitted[0]["job"].threads == 2
    assert [s["argv"] for s in world.submitted] == [
        ["--method", "m", "--seed", str(i), "--out", str(world.dir / "runs" / f"run-k{i + 1}"), "--no-progress"]
        for i in range(3)]
    assert world.log == ["started cell k1 (run-k1) as local job 101", "started cell k2 (run-k2) as local job 102",
                         "cell k1 (run-k1): done mean mIoU 41.00", "started cell k3 (run-k3) as local job 103",
                         "cell k3 (run-k3): done mean mIoU 5.00",
                         "cell k2 (run-k2): failed ended without a result (no scheduler record)"]
    assert [(s.key, s.state) for s in statuses] == [("k1", "done"), ("k2", "failed"), ("k3", "done")]
    # each cell is queued (visible to `status` as pending) before the first starts
    queued = {"executor": "local", "job_id": None, "queued": "T", "scheduler_pid": os.getpid(), "resume": False}
    first = world.submitted[0]["manifest"]
    assert first["executor"] == settings.to_dict()
    assert {k: c["submissions"] for k, c in first["cells"].items()} == {"k0": [], "k1": [queued], "k2": [queued],
                                                                        "k3": [queued]}
    manifest = json.loads((world.dir / "manifest.json").read_text())
    assert [manifest["cells"][k]["submissions"] for k in ("k1", "k2", "k3")] == [
        [_entry(world, "101", False)], [_entry(world, "102", False)], [_entry(world, "103", False)]]


def test_local_scheduler_defaults_to_one_cell_at_a_time(world):
    world.job_ids = ["1", "2"]
    world.plan = {"k1": (2, 1.0), "k2": (1, "no score")}
    sweep.submit_cells(world.dir, _cells("k1", "k2"), ExecutorSettings(), resume=True, log=world.log.append)
    assert world.events == [("submit", "k1"), ("sleep", 0.5), ("sleep", 0.5), ("done", "k1"), ("submit", "k2"),
                            ("sleep", 0.5), ("done", "k2")]
    assert world.log[-1] == "cell k2 (run-k2): done"  # a record without a score: nothing after the state
    assert all(s["resume"] is True for s in world.submitted)
    assert world.submitted[0]["manifest"]["cells"]["k2"]["submissions"][0]["resume"] is True


def test_local_scheduler_cancels_its_running_jobs_on_ctrl_c(world, monkeypatch):
    world.job_ids = ["1", "2", "3"]
    world.plan = {"k1": (5, 1.0), "k2": (5, 1.0)}

    def interrupted(s):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.submit_cells(world.dir, _cells("k1", "k2", "k3"), ExecutorSettings(max_parallel=2), resume=False,
                           log=world.log.append)
    assert [(j.job_id, j.cancelled) for j in world.jobs] == [("1", True), ("2", True)]


def test_paths_in_the_manifest_are_relative_to_the_sweep_folder(tmp_path):
    assert sweep._rel(tmp_path, tmp_path / "submitit" / "x.out") == "submitit/x.out"
    assert sweep._rel(str(tmp_path / "a" / ".."), tmp_path / "b") == "b"  # both resolved
    assert sweep._rel(tmp_path / "sw", tmp_path / "elsewhere" / "x.out") == str(tmp_path / "elsewhere" / "x.out")


# ============================================================================================== waiting
def _st(key, state, detail=""):
    return sweep.CellStatus(key, f"n-{key}", {}, state, detail=detail)


def test_wait_logs_each_change_and_returns_when_nothing_is_live(monkeypatch):
    script = [[_st("a", "pending"), _st("b", "running")], [_st("a", "running"), _st("b", "running")],
              [_st("a", "done", "mean mIoU 1.00"), _st("b", "unknown")], [_st("a", "done"), _st("b", "failed", "x")]]
    calls, sleeps, log = [], [], []
    monkeypatch.setattr(sweep, "cell_statuses", lambda d: calls.append(d) or script[len(calls) - 1])
    monkeypatch.setattr(sweep.time, "sleep", sleeps.append)
    monkeypatch.setattr(sweep, "now_iso", lambda: "T")
    assert sweep.wait_for_cells("dir", log=log.append) is script[3]
    assert calls == ["dir"] * 4 and sleeps == [2.0, 2.0, 2.0]
    assert log == ["T cell a (n-a): pending", "T cell b (n-b): running", "T cell a (n-a): running",
                   "T cell a (n-a): done mean mIoU 1.00", "T cell b (n-b): unknown", "T cell b (n-b): failed x"]
    calls.clear()
    assert sweep.wait_for_cells("dir", log=None, poll_s=0.1) is script[3] and sleeps[3:] == [0.1, 0.1, 0.1]


def test_wait_prints_by_default_and_stops_at_unsubmitted(monkeypatch, capsys):
    monkeypatch.setattr(sweep, "cell_statuses", lambda d: [_st("a", "unsubmitted"), _st("b", "done")])
    monkeypatch.setattr(sweep, "now_iso", lambda: "T")
    assert [s.state for s in sweep.wait_for_cells("dir")] == ["unsubmitted", "done"]
    assert capsys.readouterr().out == "T cell a (n-a): unsubmitted\nT cell b (n-b): done\n"


def test_wait_gives_up_after_its_timeout(monkeypatch):
    clock = iter([100.0, 104.0, 105.0, 105.5])
    calls = []
    monkeypatch.setattr(sweep.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(sweep.time, "sleep", lambda s: None)
    monkeypatch.setattr(sweep, "cell_statuses", lambda d: calls.append(d) or [_st("a", "pending")])
    assert sweep.wait_for_cells("dir", timeout_s=5, log=None)[0].state == "pending"
    assert len(calls) == 3  # 105 is not past the deadline, 105.5 is


# ============================================================================================== resubmission
def _manifest(w, states):
    with sweep.edit_manifest(w.dir) as m:
        for i, key in enumerate(states):
            m["cells"][key] = {**_cells(key)[0].to_dict(), "labels": {"seed": i}, "submissions": []}


def test_resubmit_failed_submits_failed_and_unsubmitted_cells_with_resume(world, monkeypatch, capsys):
    states = {"k1": "failed", "k2": "done", "k3": "unsubmitted", "k4": "running", "k5": "pending", "k6": "unknown",
              "k7": "failed"}
    _manifest(world, states)
    calls = []
    monkeypatch.setattr(sweep, "submit_cells", lambda *a, **kw: calls.append((a, kw)) or ["statuses"])
    settings = ExecutorSettings(executor="slurm")
    statuses = [_st(k, s) for k, s in states.items()]
    assert sweep.resubmit_failed(world.dir, settings, log=world.log.append, statuses=statuses) == ["statuses"]
    (sweep_dir, cells, given), kw = calls[0]
    assert sweep_dir == world.dir and given is settings and kw == {"resume": True, "log": world.log.append}
    assert [(c.key, c.name, c.argv, c.labels, c.kind) for c in cells] == [
        ("k1", "run-k1", ["--method", "m", "--seed", "0"], {"seed": 0}, "run"),
        ("k3", "run-k3", ["--method", "m", "--seed", "0"], {"seed": 2}, "run"),
        ("k7", "run-k7", ["--method", "m", "--seed", "0"], {"seed": 6}, "run")]
    assert world.log == ["resubmitting 3 failed cell(s) with slurm: they resume from their last checkpoint"]

    seen = []
    monkeypatch.setattr(sweep, "cell_statuses", lambda d, m: seen.append((d, sorted(m["cells"]))) or [_st("k2", "done")])
    assert sweep.resubmit_failed(world.dir, settings) is None  # statuses read from the folder's manifest
    assert seen == [(world.dir, sorted(states))] and len(calls) == 1
    assert capsys.readouterr().out == "no failed cells to resubmit\n"


# ============================================================================================== run_cells
@pytest.fixture
def planned(world, monkeypatch, capsys):
    """Six cells: done, running, failed, new, pending, unknown (cell_statuses is a fake); submit_cells recorded."""
    p = SimpleNamespace(states={"k1": "done", "k2": "running", "k3": "failed", "k4": "unsubmitted", "k5": "pending",
                                "k6": "unknown"}, previews=[], submits=[], final=None, waits=[])
    p.cells = _cells(*p.states)
    p.cells[5].labels["profile"] = "released"
    for c in p.cells:
        c.labels.update(method="m", backbone="b", protocol="pr", variant="v")
    with sweep.edit_manifest(world.dir) as m:  # the folder knows all but k4, and one cell of another grid
        for c in p.cells:
            if c.key != "k4":
                m["cells"][c.key] = {**c.to_dict(), "submissions": [{"executor": "slurm", "job_id": f"7_{c.key}"}]}
        m["cells"]["other"] = {**_cells("other")[0].to_dict(), "submissions": []}

    def cell_statuses(sweep_dir, manifest=None):
        assert sweep_dir == world.dir
        if manifest is not None:
            p.previews.append(manifest)
            return [sweep.CellStatus(k, e["name"], e["labels"], p.states[k], job_id=f"7_{k}")
                    for k, e in manifest["cells"].items()]
        return p.final

    def wait_for_cells(sweep_dir, *, poll_s):
        p.waits.append((sweep_dir, poll_s))
        return p.final

    monkeypatch.setattr(sweep, "cell_statuses", cell_statuses)
    monkeypatch.setattr(sweep, "wait_for_cells", wait_for_cells)
    monkeypatch.setattr(sweep, "submit_cells", lambda d, cells, s, *, resume, poll_s: p.submits.append(
        (d, [c.key for c in cells], s, resume, poll_s)))
    capsys.readouterr()
    return p


def test_dry_run_lists_every_cell_and_submits_nothing(world, planned, capsys):
    before = (world.dir / "manifest.json").read_text()
    settings = ExecutorSettings(executor="slurm")
    assert sweep.run_cells(world.dir, planned.cells, settings, ["--dry-run"], dry_run=True) == 0
    w = 36  # len("skip: failed (add --resubmit-failed)")
    assert capsys.readouterr().out.splitlines() == [
        f"sweep folder: {world.dir}",
        "6 cells (slurm executor): 1 to submit, 1 done, 3 queued or running, 1 failed and not resubmitted",
        f"  {'skip: done':<{w}}  k1  m b pr v seed 0 harmonised  -> runs/run-k1",
        f"  {'skip: running (job 7_k2)':<{w}}  k2  m b pr v seed 1 harmonised  -> runs/run-k2",
        f"  {'skip: failed (add --resubmit-failed)':<{w}}  k3  m b pr v seed 2 harmonised  -> runs/run-k3",
        f"  {'submit':<{w}}  k4  m b pr v seed 3 harmonised  -> runs/run-k4",
        f"  {'skip: pending (job 7_k5)':<{w}}  k5  m b pr v seed 4 harmonised  -> runs/run-k5",
        f"  {'skip: unknown (job 7_k6)':<{w}}  k6  m b pr v seed 5 released  -> runs/run-k6"]
    assert (world.dir / "manifest.json").read_text() == before and planned.submits == []
    # the preview: the folder's entries of the planned cells, a new one without submissions, no other grid's cell
    preview = planned.previews[0]["cells"]
    assert list(preview) == ["k1", "k2", "k3", "k4", "k5", "k6"]
    assert preview["k4"] == {**planned.cells[3].to_dict(), "submissions": []}
    assert preview["k1"]["submissions"] == [{"executor": "slurm", "job_id": "7_k1"}]
    assert planned.previews[0]["schema"] == 1


def test_dry_run_with_resubmit_failed(world, planned, capsys):
    sweep.run_cells(world.dir, planned.cells, ExecutorSettings(), [], dry_run=True, resubmit_failed=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "6 cells (local executor): 2 to submit, 1 done, 3 queued or running, 0 failed and not resubmitted"
    w = len("skip: running (job 7_k2)")
    assert lines[4] == f"  {'resubmit (resume)':<{w}}  k3  m b pr v seed 2 harmonised  -> runs/run-k3"
    assert sweep.run_cells(world.dir, [], ExecutorSettings(), [], dry_run=True) == 0
    assert capsys.readouterr().out.splitlines()[1] == \
        "0 cells (local executor): 0 to submit, 0 done, 0 queued or running, 0 failed and not resubmitted"


def test_new_cells_start_fresh_and_failed_ones_resume(world, planned, capsys):
    settings = ExecutorSettings(executor="slurm")
    assert sweep.run_cells(world.dir, planned.cells, settings, ("--methods", "m"), resubmit_failed=True) == 0
    assert planned.submits == [(world.dir, ["k4"], settings, False, 0.5), (world.dir, ["k3"], settings, True, 0.5)]
    manifest = json.loads((world.dir / "manifest.json").read_text())
    assert manifest["invocations"] == [{"time": "T", "argv": ["--methods", "m"],
                                        "cells": ["k1", "k2", "k3", "k4", "k5", "k6"]}]
    assert manifest["cells"]["k4"] == {**planned.cells[3].to_dict(), "submissions": []}
    assert manifest["cells"]["k1"]["submissions"] == [{"executor": "slurm", "job_id": "7_k1"}]  # kept
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"check progress with: python -m runners.sweep status {world.dir}" and len(out) == 3
    planned.submits.clear()
    sweep.run_cells(world.dir, planned.cells, settings, [], poll_s=0.2)  # failed cells are left alone
    assert planned.submits == [(world.dir, ["k4"], settings, False, 0.2)]
    planned.states = dict.fromkeys(planned.states, "done")
    planned.submits.clear()
    sweep.run_cells(world.dir, planned.cells, settings, [])
    assert planned.submits == []


def test_exit_codes_after_waiting_or_a_local_run(world, planned, capsys):
    slurm = ExecutorSettings(executor="slurm")
    planned.final = [_st("k1", "done"), _st("k3", "failed")]
    assert sweep.run_cells(world.dir, planned.cells, slurm, [], wait=True, poll_s=3.0) == 1
    assert planned.waits == [(world.dir, 3.0)]
    assert capsys.readouterr().out.endswith(sweep.format_status(planned.final) + "\n")
    planned.final = [_st("k1", "done"), _st("k3", "unsubmitted")]
    assert sweep.run_cells(world.dir, planned.cells, slurm, [], wait=True) == 0
    assert planned.waits[1] == (world.dir, 5.0)  # polls every 5 s by default

    local = ExecutorSettings()
    planned.final = [_st("k1", "done"), _st("k3", "failed")]
    assert sweep.run_cells(world.dir, planned.cells, local, []) == 1
    assert capsys.readouterr().out.endswith(sweep.format_status(planned.final) + "\n")
    planned.final = [_st("k1", "done"), _st("other", "failed")]  # another grid's failed cell does not count
    assert sweep.run_cells(world.dir, planned.cells, local, [], wait=True) == 0
    assert len(planned.waits) == 2  # --wait means nothing for the local executor (it has waited)
