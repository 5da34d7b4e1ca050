"""runners.outdir: one live run per folder, finished runs skipped, started runs only resumed or superseded."""

import json
import os
import socket
import subprocess
import sys

import pytest

import runners.run as run_mod
from runners import outdir
from runners.outdir import LOCK_FILE, check_run_folder, open_run_folder, take_lock
from runners.preflight import UserError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(out, **owner):
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "started": "t", **owner}))


def test_a_live_lock_refuses_a_second_run(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    out = tmp_path / "run"
    _write_lock(out, pid=os.getppid())  # a live process on this host
    with pytest.raises(UserError, match=f"another run is using this folder .host {socket.gethostname()}, "
                                        f"pid {os.getppid()}") as info:
        check_run_folder(out, resume=True, force=True)
    assert str(out / LOCK_FILE) in info.value.line()
    with pytest.raises(UserError, match="another run"):
        take_lock(out, log=lambda *_: None)
    _write_lock(out, pid=os.getppid(), host="elsewhere")  # another host: assumed live
    with pytest.raises(UserError, match="another run"):
        check_run_folder(out, resume=False, force=False)


def test_stale_locks_are_taken_over(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _write_lock(out, pid=_dead_pid())
    assert check_run_folder(out, resume=False, force=False)
    with take_lock(out, log=lambda *_: None) as lock:
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid() == lock.owner["pid"]
    assert not (out / LOCK_FILE).exists()  # released
    # a requeued Slurm job resuming on another node: its own job id in the lock means its old process is gone
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    _write_lock(out, pid=os.getppid(), host="node-a", slurm_job="4242")
    assert check_run_folder(out, resume=True, force=False)


def test_finished_runs_are_skipped_and_started_runs_need_resume_or_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_log.jsonl").write_text('{"iteration": 1}\n')
    with pytest.raises(UserError, match=r"holds a started run \(train_log.jsonl\)") as info:
        check_run_folder(out, resume=False, force=False)
    assert "--resume" in info.value.line() and "--force" in info.value.line()
    assert check_run_folder(out, resume=True, force=False)
    (out / "result.json").write_text("{}")
    messages = []
    assert check_run_folder(out, resume=True, force=False, log=messages.append) is False
    assert "already finished" in messages[0] and "--force" in messages[0]

    assert check_run_folder(out, resume=False, force=True)
    with open_run_folder(out, force=True, log=messages.append):
        kept = list((out / outdir.SUPERSEDED_DIR).iterdir())
        assert len(kept) == 1 and sorted(p.name for p in kept[0].iterdir()) == ["result.json", "train_log.jsonl"]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, outdir.SUPERSEDED_DIR]
    assert (kept[0] / "train_log.jsonl").read_text() == '{"iteration": 1}\n'  # moved, never deleted


def test_the_command_line_skips_a_finished_run_and_refuses_a_started_one(tmp_path, tiny_miniature_root, capsys,
                                                                       monkeypatch):
    def built(*args, **kwargs):
        raise AssertionError("the run should not start")
    monkeypatch.setattr(run_mod, "execute", built)
    argv = ["--method", "frozen_m2f", "--data-root", str(tiny_miniature_root), "--iters", "2", "--no-progress"]
    started = tmp_path / "started"
    started.mkdir()
    (started / "spec.json").write_text("{}")
    assert run_mod.main(argv + ["--out", str(started)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--resume" in err and "--force" in err
    assert (started / "spec.json").read_text() == "{}"

    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "result.json").write_text('{"kept": true}')
    assert run_mod.main(argv + ["--out", str(finished)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (finished / "result.json").read_text() == '{"kept": true}'
    assert not (finished / LOCK_FILE).exists()
