"""``--resubmit-failed`` resumes a failed cell from its checkpoint (never restarts it) and leaves done cells alone;
both spellings (``runners.sweep ... --resubmit-failed`` and ``runners.sweep status DIR --resubmit-failed``), with
the local executor (the Slurm twin is tests/runners/test_sweep_slurm.py)."""

import json

import pytest

from runners import sweep


def _cmd(out, *extra):
    return ["--selftest", "--methods", "m", "--seeds", "2", "--out", str(out), "--executor", "local",
            "--max-parallel", "2", "--run-args", "--iters 3 --iter-seconds 0.01 --fail-seed 1", *extra]


def _cells(out):
    manifest = json.loads((out / sweep.MANIFEST_FILE).read_text())
    return {c["labels"]["seed"]: c for c in manifest["cells"].values()}


def _fail_then_checkpoint(out, capsys):
    """Seed 1 fails; then it is given a checkpoint at iteration 2 (as if killed there) to resume from."""
    assert sweep.main(_cmd(out)) == 1
    capsys.readouterr()
    cells = _cells(out)
    failed = out / cells[1]["run_dir"]
    (failed / "checkpoints").mkdir(parents=True, exist_ok=True)
    (failed / "checkpoints" / "last.pt").write_text(json.dumps({"iteration": 2, "key": "x"}))
    done_record = (out / cells[0]["run_dir"] / "result.json").read_text()
    return cells, failed, done_record


@pytest.mark.parametrize("spelling", ["sweep", "status"])
def test_resubmitted_cell_resumes_from_its_checkpoint(tmp_path, capsys, spelling):
    out = tmp_path / "sw"
    cells, failed, done_record = _fail_then_checkpoint(out, capsys)
    if spelling == "sweep":
        assert sweep.main(_cmd(out, "--resubmit-failed")) == 0
    else:
        assert sweep.main(["status", str(out), "--resubmit-failed"]) == 0
    capsys.readouterr()
    after = _cells(out)
    assert len(after[0]["submissions"]) == 1 and len(after[1]["submissions"]) == 2  # only the failed cell
    assert after[1]["submissions"][-1]["resume"] is True
    record = json.loads((failed / "result.json").read_text())
    assert record["train"] == {"iterations": 3, "resumed_from": 2}
    log = (out / after[1]["submissions"][-1]["stdout"]).read_text()
    assert "resuming from" in log and "at iteration 2" in log
    assert "iteration 3/3" in log and "iteration 1/3" not in log and "iteration 2/3" not in log  # not redone
    assert (out / cells[0]["run_dir"] / "result.json").read_text() == done_record  # the done cell is untouched


def test_without_the_flag_a_failed_cell_is_left_alone(tmp_path, capsys):
    out = tmp_path / "sw"
    _fail_then_checkpoint(out, capsys)
    assert sweep.main(_cmd(out)) == 1  # still failed, nothing resubmitted
    assert "0 to submit, 1 done, 0 queued or running, 1 failed and not resubmitted" in capsys.readouterr().out
    assert [len(c["submissions"]) for _, c in sorted(_cells(out).items())] == [1, 1]
