"""runners.sweep without a cluster: planning (cell keys = run spec hashes), executor settings, and the local
executor end to end with SelfTestJob cells (skip of finished cells, failure report, --resubmit-failed)."""

import json

import pytest

from runners import sweep
from runners.slurm import ExecutorSettings, load_settings_file, make_executor, timeout_minutes


def _selftest_cmd(out, *extra):
    return ["--selftest", "--methods", "m1,m2", "--protocols", "gta2cbm", "--seeds", "2", "--out", str(out),
            "--executor", "local", "--max-parallel", "2", "--run-args", "--iters 2 --iter-seconds 0.05", *extra]


def test_grid_options():
    assert sweep.parse_seeds("3") == [0, 1, 2]
    assert sweep.parse_seeds("0,4,7") == [0, 4, 7]
    assert sweep.parse_seeds("5:8") == [5, 6, 7]
    with pytest.raises(SystemExit, match="--seeds"):
        sweep.parse_seeds("a,b")
    assert [timeout_minutes(t) for t in ("90", "1:30", "1:30:10", "2-00:00")] == [90, 90, 91, 2880]
    with pytest.raises(ValueError, match="minutes or"):
        timeout_minutes("soon")


def test_executor_settings_from_file_and_cli(tmp_path):
    (tmp_path / "s.toml").write_text('executor = "slurm"\n[slurm]\npartition = "gpu"\ntime = "2:00:00"\n'
                                     'gpus_per_task = 8\nmax_parallel = 4\nsetup = ["module load cuda"]\n'
                                     'additional = { reservation = "dgss" }\n')
    (tmp_path / "s.json").write_text(json.dumps({"partition": "a100", "max-parallel": 2}))
    (tmp_path / "bad.json").write_text(json.dumps({"partiton": "x"}))
    toml = ExecutorSettings().merged(load_settings_file(tmp_path / "s.toml"))
    assert (toml.executor, toml.partition, toml.timeout_min, toml.procs, toml.max_parallel) == ("slurm", "gpu", 120, 8, 4)
    assert load_settings_file(tmp_path / "s.json") == {"partition": "a100", "max-parallel": 2}
    with pytest.raises(ValueError, match="unknown executor setting 'partiton'"):
        load_settings_file(tmp_path / "bad.json")
    # command line > file > stored defaults
    args = sweep.build_parser().parse_args(["--methods", "x", "--slurm-config", str(tmp_path / "s.toml"),
                                            "--partition", "h100", "--sbatch", "exclusive=user"])
    merged = sweep._settings_from(args)
    assert merged.partition == "h100" and merged.gpus_per_task == 8
    assert merged.additional == {"reservation": "dgss", "exclusive": "user"}


def test_slurm_executor_parameters(tmp_path, monkeypatch):
    """What reaches sbatch: DDP tasks per cell, GPUs, array cap, appended logs across requeues. Only the
    submission file is rendered, so this runs without a Slurm cluster (submitit's srun probe answers yes)."""
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    settings = ExecutorSettings(executor="slurm", partition="gpu", time="5", gpus_per_task=4, cpus_per_task=8,
                                max_parallel=3, additional={"reservation": "r1"})
    ex = make_executor(settings, tmp_path, num_cells=10)
    assert ex.cluster == "slurm"
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8",
                 "--time=5", "--open-mode=append", "--reservation=r1", "--signal=USR2@30"):
        assert f"#SBATCH {line}" in text, line
    assert "export PYTHONPATH=" in text
    assert ex._executor.parameters["array_parallelism"] == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    local = make_executor(ExecutorSettings(executor="local"), tmp_path, num_cells=1)
    assert local.cluster == "local"  # explicit: AutoExecutor would pick Slurm whenever srun is on PATH
    # submitit's local executor would hide the GPUs (gpus_per_node=0): the cells see this shell's GPUs
    assert local._executor.parameters["setup"][0] == "export CUDA_VISIBLE_DEVICES=1"


def test_local_sweep_dry_run_runs_and_skips(tmp_path, capsys):
    out = tmp_path / "sw"
    assert sweep.main(_selftest_cmd(out, "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "4 cells (local executor): 4 to submit" in text and text.count("  submit  ") == 4
    assert not (out / sweep.MANIFEST_FILE).exists()

    assert sweep.main(_selftest_cmd(out)) == 0
    manifest = json.loads((out / sweep.MANIFEST_FILE).read_text())
    assert len(manifest["cells"]) == 4
    for key, cell in manifest["cells"].items():
        record = json.loads((out / cell["run_dir"] / "result.json").read_text())
        assert record["spec_hash"] == key  # the cell key is the key the run records
        sub = cell["submissions"][-1]
        assert sub["executor"] == "local" and sub["job_id"]
        assert "iteration 2/2" in (out / sub["stdout"]).read_text()  # per-cell log, found via the manifest
    capsys.readouterr()

    assert sweep.main(_selftest_cmd(out, "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "0 to submit, 4 done" in text and text.count("skip: done") == 4
    assert sweep.main(["status", str(out)]) == 0
    assert "4 cells: 4 done" in capsys.readouterr().out


def test_local_failed_cell_is_reported_and_resubmitted(tmp_path, capsys):
    out = tmp_path / "sw"
    cmd = ["--selftest", "--methods", "m", "--seeds", "2", "--out", str(out), "--max-parallel", "2",
           "--run-args", "--iters 2 --iter-seconds 0.05 --fail-seed 1"]
    assert sweep.main(cmd) == 1  # one cell failed
    capsys.readouterr()
    assert sweep.main(["status", str(out), "--json"]) == 1
    states = {s["labels"]["seed"]: s for s in json.loads(capsys.readouterr().out)}
    assert states[0]["state"] == "done" and states[1]["state"] == "failed"
    assert any("injected failure" in line for line in states[1]["error"])  # the error's last lines

    assert sweep.main([*cmd, "--dry-run"]) == 0
    assert "skip: failed (add --resubmit-failed)" in capsys.readouterr().out
    assert sweep.main(["status", str(out), "--resubmit-failed"]) == 0
    text = capsys.readouterr().out
    assert "resubmitting 1 failed cell" in text and "2 cells: 2 done" in text
    manifest = json.loads((out / sweep.MANIFEST_FILE).read_text())
    attempts = sorted(len(c["submissions"]) for c in manifest["cells"].values())
    assert attempts == [1, 2]  # only the failed cell was resubmitted
    assert all(c["submissions"][-1]["resume"] == (len(c["submissions"]) == 2) for c in manifest["cells"].values())


def test_status_of_a_folder_that_is_not_a_sweep(tmp_path):
    with pytest.raises(SystemExit, match="not a sweep folder"):
        sweep.main(["status", str(tmp_path)])


def test_real_cells_are_keyed_by_the_run_spec_hash(tiny_miniature_root):
    from runners import run as run_mod

    grid = sweep.Grid(methods=["frozen_m2f"], protocols=["gta2cbm"], variants=["default"], seeds=[0, 1],
                      run_args=["--iters", "4", "--batch-size", "2", "--data-root", str(tiny_miniature_root)])
    cells = sweep.plan_cells(grid, log=lambda *_: None)
    assert len(cells) == 2 and {c.labels["seed"] for c in cells} == {0, 1}
    for cell in cells:
        run = run_mod.resolve(run_mod.build_parser().parse_args(cell.argv), log=lambda *_: None)
        assert run.spec_hash == cell.key and run.out.name == cell.name and run.miniature
    other = sweep.plan_cells(sweep.Grid(**{**grid.__dict__, "run_args": ["--iters", "5", *grid.run_args[2:]]}),
                             log=lambda *_: None)
    assert {c.key for c in other}.isdisjoint(c.key for c in cells)  # a config change is a new cell
    with pytest.raises(SystemExit, match="no evaluation variant"):
        sweep.plan_cells(sweep.Grid(methods=["frozen_m2f"], protocols=["gta2cbm"], variants=["nope"]))


