"""runners.sweep on a real Slurm cluster (runners/slurm_ci/up.sh): job arrays, failure detection,
--resubmit-failed, preemption requeue that resumes from the checkpoint, and records identical to the
local executor's. Skipped when Slurm is not reachable."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from runners import sweep
from runners.slurm import slurm_available

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def partition():
    ok, why = slurm_available()
    if not ok:
        pytest.skip(f"no Slurm cluster: {why} (start one with: sudo bash runners/slurm_ci/up.sh)")
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    default = [p for p in out if p.endswith("*")]
    return (default or out)[0].rstrip("*")


def _squeue(job_id):
    out = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True).stdout
    return out.strip().split("|") if out.strip() else ["", ""]


_HELD_SINCE: dict[str, float] = {}


def _release_requeue_holds(statuses, settle_s: float = 8.0):
    """Slurm holds a requeued job for ~2 minutes (Reason=BeginTime); let it start sooner.

    Not at once: a requeued job restarted within a second of its requeue can be killed by slurmctld with
    "Job credential revoked" while the node is still cleaning up the previous run, so wait ``settle_s``."""
    now = time.monotonic()
    for st in statuses:
        if st.state == "pending" and "BeginTime" in st.detail:
            since = _HELD_SINCE.setdefault(st.job_id, now)
            if now - since >= settle_s:
                subprocess.run(["scontrol", "update", f"JobId={st.job_id}", "StartTime=now"], capture_output=True)


def _wait(sweep_dir, until, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = {st.key: st for st in sweep.cell_statuses(sweep_dir)}
        if until(statuses):
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}:\n"
                                 + sweep.format_status(list(statuses.values())))
        _release_requeue_holds(statuses.values())
        time.sleep(0.5)


def _cells(sweep_dir):
    manifest = json.loads((sweep_dir / sweep.MANIFEST_FILE).read_text())
    return {c["labels"]["seed"]: {**c, "key": k} for k, c in manifest["cells"].items()}


def test_selftest_cells_fail_resubmit_and_skip(tmp_path, partition, capsys):
    """A Python exception in a cell: reported as failed with its traceback, only that cell is resubmitted."""
    out = tmp_path / "sw"
    cmd = ["--selftest", "--methods", "m", "--seeds", "3", "--out", str(out), "--executor", "slurm",
           "--partition", partition, "--time", "5", "--max-parallel", "2",
           "--run-args", "--iters 2 --iter-seconds 0.05 --fail-seed 2"]
    assert sweep.main(cmd) == 0  # submit and exit
    assert "as Slurm job array" in capsys.readouterr().out
    final = _wait(out, lambda s: not any(st.state in ("pending", "running", "unknown") for st in s.values()),
                  90, "the array to finish")
    by_seed = {st.labels["seed"]: st for st in final.values()}
    assert [by_seed[s].state for s in (0, 1, 2)] == ["done", "done", "failed"]
    assert any("injected failure" in line for line in by_seed[2].error)
    assert by_seed[0].job_id.split("_")[0] == by_seed[2].job_id.split("_")[0]  # one array

    assert sweep.main([*cmd, "--resubmit-failed"]) == 0
    assert "1 to submit, 2 done" in capsys.readouterr().out
    _wait(out, lambda s: all(st.state == "done" for st in s.values()), 90, "the resubmitted cell")
    assert len(_cells(out)[2]["submissions"]) == 2 and len(_cells(out)[0]["submissions"]) == 1


def test_scancelled_cell_fails_fast_and_resumes_when_resubmitted(tmp_path, partition, capsys):
    out = tmp_path / "sw"
    cmd = ["--selftest", "--methods", "m", "--out", str(out), "--executor", "slurm", "--partition", partition,
           "--time", "5", "--run-args", "--iters 60 --iter-seconds 0.2"]
    assert sweep.main(cmd) == 0
    cell = _cells(out)[0]
    ckpt = out / cell["run_dir"] / "checkpoints" / "last.pt"
    _wait(out, lambda s: ckpt.exists(), 60, "a checkpoint")
    subprocess.run(["scancel", cell["submissions"][-1]["job_id"]], check=True)
    t0 = time.monotonic()
    st = _wait(out, lambda s: s[cell["key"]].state == "failed", 60, "the cancelled cell to fail")[cell["key"]]
    assert "CANCELLED" in st.detail or "no scheduler record" in st.detail  # the latter without accounting
    print(f"\nscancel detected as failed in {time.monotonic() - t0:.1f}s")
    capsys.readouterr()
    assert sweep.main(["status", str(out), "--resubmit-failed"]) == 0
    _wait(out, lambda s: s[cell["key"]].state == "done", 90, "the resubmitted cell")
    record = json.loads((out / cell["run_dir"] / "result.json").read_text())
    assert 1 <= record["train"]["resumed_from"] < 60


def test_real_cells_preempted_killed_resubmitted_and_equal_to_local(tmp_path, partition, tiny_miniature_root,
                                                                    capsys):
    """Two miniature frozen_m2f cells on Slurm: seed 0 is preempted mid-training (requeued by submitit, resumes
    from its checkpoint), seed 1 is killed with SIGKILL (failed, no hang) and resubmitted with --resubmit-failed (resumes).
    Both records equal those of the same sweep run uninterrupted with the local executor."""
    t0 = time.monotonic()
    common = ["--methods", "frozen_m2f", "--protocols", "gta2cbm", "--seeds", "2", "--iters", "12",
              "--batch-size", "2", "--checkpoint-interval", "1", "--no-reference",
              "--data-root", str(tiny_miniature_root), "--max-parallel", "2"]
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_cmd = [*common, "--out", str(slurm_dir), "--executor", "slurm", "--partition", partition, "--time", "10"]
    assert sweep.main(slurm_cmd) == 0
    cells = _cells(slurm_dir)
    preempted, killed = cells[0], cells[1]
    ckpts = {s: slurm_dir / c["run_dir"] / "checkpoints" / "last.pt" for s, c in cells.items()}
    job_a = preempted["submissions"][-1]["job_id"]
    log_b = slurm_dir / killed["submissions"][-1]["stdout"]
    signals = {  # sent to each cell as soon as it has a training checkpoint
        0: lambda: subprocess.run(["scancel", "--signal=USR2", job_a], check=True),  # Slurm's preemption warning
        # kill -9 of the training process, like the OOM killer (scancel would give it KillWait seconds of grace)
        1: lambda: os.kill(int(re.search(r"starting at \S+ \(.*pid (\d+)\)", log_b.read_text()).group(1)),
                           signal.SIGKILL),
    }
    deadline = time.monotonic() + 240
    while signals and time.monotonic() < deadline:  # a tight loop: iterations take a fraction of a second
        for seed in [s for s in signals if ckpts[s].exists()]:
            signals.pop(seed)()
        time.sleep(0.02)
    assert not signals, f"no training checkpoint after 240 s:\n{sweep.format_status(sweep.cell_statuses(slurm_dir))}"
    t_kill = time.monotonic()

    statuses = _wait(slurm_dir, lambda s: s[killed["key"]].state == "failed", 60, "the killed cell to fail")
    assert "ended without a result" in statuses[killed["key"]].detail, statuses[killed["key"]]
    t_detect = time.monotonic() - t_kill
    capsys.readouterr()
    sweep.main(["status", str(slurm_dir), "--resubmit-failed"])
    assert "resubmitting 1 failed cell" in capsys.readouterr().out
    _wait(slurm_dir, lambda s: all(st.state == "done" for st in s.values()), 300, "all cells to finish")
    t_slurm = time.monotonic() - t0

    log_a = (slurm_dir / preempted["submissions"][-1]["stdout"]).read_text()
    assert "requeued, it will resume from its last checkpoint" in log_a
    resumed_at = [int(k) for k in re.findall(r"resuming from \S+last\.pt at iteration (\d+)", log_a)]
    assert len(resumed_at) == 1 and 1 <= resumed_at[0] <= 12, log_a[-2000:]
    records = {s: json.loads((slurm_dir / c["run_dir"] / "result.json").read_text()) for s, c in cells.items()}
    assert records[0]["train"]["resumed_from"] == resumed_at[0]
    assert 1 <= records[1]["train"]["resumed_from"] < 12  # the resubmitted cell continued, not from scratch
    assert len(_cells(slurm_dir)[1]["submissions"]) == 2

    capsys.readouterr()
    assert sweep.main([*slurm_cmd, "--dry-run"]) == 0
    assert "0 to submit, 2 done" in capsys.readouterr().out

    t1 = time.monotonic()
    assert sweep.main([*common, "--out", str(local_dir), "--executor", "local"]) == 0
    t_local = time.monotonic() - t1
    local_cells = _cells(local_dir)
    for seed, cell in cells.items():
        assert local_cells[seed]["key"] == cell["key"]
        local = json.loads((local_dir / cell["run_dir"] / "result.json").read_text())
        assert local["spec_hash"] == records[seed]["spec_hash"] and local["train"]["resumed_from"] is None
        for target, res in records[seed]["results"]["targets"].items():
            assert local["results"]["targets"][target]["miou"] == pytest.approx(res["miou"], abs=1e-6), (seed, target)
        assert local["results"]["mean_miou"] == pytest.approx(records[seed]["results"]["mean_miou"], abs=1e-6)
    print(f"\nslurm sweep with preemption + kill + resubmit: {t_slurm:.0f}s (kill detected in {t_detect:.1f}s); "
          f"local sweep: {t_local:.0f}s")
