"""The sweep command line: every option's default, type and spelling, the options passed on to each
``runners.run``, the grid and executor settings they make, the default sweep folder, and the ``status``
command (``--json``, ``--wait``, ``--resubmit-failed``); planning, submission and the scheduler are fakes."""

import hashlib
import json
from types import SimpleNamespace

import pytest

from runners import sweep
from runners.slurm import ExecutorSettings

_EXECUTOR_DEFAULTS = {"executor": None, "config_file": None, "partition": None, "time": None, "gpus_per_task": None,
                      "procs_per_task": None, "cpus_per_task": None, "mem_gb": None, "max_parallel": None,
                      "account": None, "qos": None, "constraint": None, "exclude": None, "signal_delay_s": None,
                      "max_timeouts": None, "setup": None, "sbatch": None}


def test_sweep_parser_defaults():
    args = sweep.build_parser().parse_args(["--methods", "m"])
    assert vars(args) == {
        "methods": "m", "protocols": "gta2cbm", "eval_variants": None, "backbones": None, "seeds": None, "out": None,
        "iters": None, "batch_size": None, "lr": None, "checkpoint_interval": None, "log_interval": None,
        "data_root": None, "weights_dir": None, "device": None, "workers": None, "allow_random_init": None,
        "no_reference": None, "profile": None, "precision": None, "cfg_options": None, "run_args": "",
        **_EXECUTOR_DEFAULTS, "dry_run": False, "resubmit_failed": False, "wait": False, "poll_s": 5.0,
        "selftest": False}
    with pytest.raises(SystemExit):
        sweep.build_parser().parse_args([])  # --methods is required


def test_sweep_parser_spellings_and_types():
    args = sweep.build_parser().parse_args([
        "--methods", "a", "--eval-variant", "v", "--backbone", "b", "--executor-config", "c.toml", "--executor",
        "slurm", "--gpus-per-task", "2", "--procs-per-task", "3", "--cpus-per-task", "4", "--mem-gb", "1.5",
        "--max-parallel", "6", "--signal-delay-s", "60", "--max-timeouts", "7", "--setup", "s1", "--setup", "s2",
        "--sbatch", "a=1", "--sbatch", "b=2", "--cfg-options", "x=1", "y=2", "--poll-s", "0.5", "--dry-run",
        "--resubmit-failed", "--wait", "--selftest", "--partition", "p", "--time", "10", "--account", "ac",
        "--qos", "q", "--constraint", "h100", "--exclude", "n1", "--profile", "released", "--precision", "tf32",
        "--allow-random-init", "--no-reference"])
    got = vars(args)
    assert {k: got[k] for k in ("eval_variants", "backbones", "config_file", "executor", "gpus_per_task",
                                "procs_per_task", "cpus_per_task", "mem_gb", "max_parallel", "signal_delay_s",
                                "max_timeouts", "setup", "sbatch", "cfg_options", "poll_s", "dry_run",
                                "resubmit_failed", "wait", "selftest", "partition", "time", "account", "qos",
                                "constraint", "exclude", "profile", "precision", "allow_random_init",
                                "no_reference")} == {
        "eval_variants": "v", "backbones": "b", "config_file": "c.toml", "executor": "slurm", "gpus_per_task": 2,
        "procs_per_task": 3, "cpus_per_task": 4, "mem_gb": 1.5, "max_parallel": 6, "signal_delay_s": 60,
        "max_timeouts": 7, "setup": ["s1", "s2"], "sbatch": ["a=1", "b=2"], "cfg_options": ["x=1", "y=2"],
        "poll_s": 0.5, "dry_run": True, "resubmit_failed": True, "wait": True, "selftest": True, "partition": "p",
        "time": "10", "account": "ac", "qos": "q", "constraint": "h100", "exclude": "n1", "profile": "released",
        "precision": "tf32", "allow_random_init": True, "no_reference": True}
    assert vars(sweep.build_parser().parse_args(["--methods", "a", "--slurm-config", "x.json", "--eval-variants",
                                                 "v,w", "--backbones", "all"]))["config_file"] == "x.json"
    chosen = sweep.build_parser().parse_args(["--methods", "a", "--executor", "local", "--precision", "fp32",
                                              "--profile", "harmonised"])
    assert (chosen.executor, chosen.precision, chosen.profile) == ("local", "fp32", "harmonised")
    for bad in (["--executor", "cloud"], ["--profile", "paper"], ["--precision", "fp16"], ["--gpus-per-task", "1.5"]):
        with pytest.raises(SystemExit):
            sweep.build_parser().parse_args(["--methods", "a", *bad])


def test_status_parser_defaults_and_options():
    assert vars(sweep.build_status_parser().parse_args(["d"])) == {
        "sweep_dir": "d", "resubmit_failed": False, "wait": False, "json": False, "poll_s": 5.0, **_EXECUTOR_DEFAULTS}
    args = sweep.build_status_parser().parse_args(["d", "--resubmit-failed", "--wait", "--json", "--poll-s", "2",
                                                   "--partition", "gpu"])
    assert (args.resubmit_failed, args.wait, args.json, args.poll_s, args.partition) == (True, True, True, 2.0, "gpu")


def test_passthrough_options_subset():
    import argparse

    p = argparse.ArgumentParser()
    sweep.add_passthrough_options(p, ["--iters", "--profile", "--no-reference"])
    assert vars(p.parse_args([])) == {"iters": None, "profile": None, "no_reference": None}
    assert vars(p.parse_args(["--iters", "3", "--profile", "harmonised", "--no-reference"])) == {
        "iters": "3", "profile": "harmonised", "no_reference": True}
    with pytest.raises(SystemExit):
        p.parse_args(["--lr", "0.1"])
    c = sweep.add_control_options(argparse.ArgumentParser())
    assert [a.dest for a in c._group_actions] == ["dry_run", "resubmit_failed", "wait", "poll_s"]


def test_passthrough_args_in_table_order_with_absolute_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = sweep.build_parser().parse_args([
        "--methods", "m", "--precision", "bf16", "--no-reference", "--iters", "4", "--batch-size", "2", "--lr", "0.1",
        "--checkpoint-interval", "5", "--log-interval", "7", "--data-root", "rel/data", "--weights-dir", "w",
        "--device", "cpu", "--workers", "3", "--allow-random-init", "--profile", "released",
        "--cfg-options", "a=1", "b=2"])
    assert sweep.passthrough_args(args) == [
        "--iters", "4", "--batch-size", "2", "--lr", "0.1", "--checkpoint-interval", "5", "--log-interval", "7",
        "--data-root", str(tmp_path / "rel" / "data"), "--weights-dir", str(tmp_path / "w"), "--device", "cpu", "--workers", "3",
        "--allow-random-init", "--no-reference", "--profile", "released", "--precision", "bf16",
        "--cfg-options", "a=1", "b=2"]
    assert sweep.passthrough_args(args, ["--weights-dir", "--no-reference", "--iters"]) == [
        "--iters", "4", "--weights-dir", str(tmp_path / "w"), "--no-reference", "--cfg-options", "a=1", "b=2"]
    assert sweep.passthrough_args(sweep.build_parser().parse_args(["--methods", "m"])) == []
    assert sweep.passthrough_args(sweep.build_parser().parse_args(["--methods", "m", "--device", "rel"])) == [
        "--device", "rel"]  # only folders are made absolute
    bare = SimpleNamespace(**{o.lstrip("-").replace("-", "_"): None for o, _, _ in sweep.RUN_PASSTHROUGH})
    assert sweep.passthrough_args(bare) == []  # no cfg_options attribute (the status command's arguments)
    bare.no_reference, bare.iters = False, 0
    assert sweep.passthrough_args(bare) == ["--iters", "0"]
    assert [(o, r, t) for o, r, t in sweep.RUN_PASSTHROUGH if o != r] == []
    assert [o for o, _, t in sweep.RUN_PASSTHROUGH if not t] == ["--allow-random-init", "--no-reference"]


def test_grid_from_args():
    args = sweep.build_parser().parse_args([
        "--methods", "a, b", "--protocols", "p,q", "--eval-variants", "v1,v2", "--backbones", "x", "--seeds", "2",
        "--iters", "3", "--run-args", "--foo 'a b' --bar", "--selftest"])
    assert sweep.grid_from_args(args) == sweep.Grid(methods=["a", "b"], protocols=["p", "q"], variants=["v1", "v2"],
                                                    backbones=["x"], seeds=[0, 1],
                                                    run_args=["--iters", "3", "--foo", "a b", "--bar"],
                                                    kind="selftest")
    plain = sweep.grid_from_args(sweep.build_parser().parse_args(["--methods", "all"]))
    assert plain == sweep.Grid(methods=["all"], protocols=["gta2cbm"], variants=[], backbones=[], seeds=[],
                               run_args=[], kind="run")
    assert sweep.grid_from_args(sweep.build_parser().parse_args(["--methods", "m", "--seeds", "4:6"])).seeds == [4, 5]


def _status_args(*argv):
    return sweep.build_status_parser().parse_args(["d", *argv])


def test_settings_from_every_option():
    args = _status_args("--executor", "slurm", "--partition", "gpu", "--time", "2:00:00", "--gpus-per-task", "4",
                        "--procs-per-task", "2", "--cpus-per-task", "8", "--mem-gb", "64", "--max-parallel", "3",
                        "--account", "acc", "--qos", "high", "--constraint", "a100", "--exclude", "n[1-2]",
                        "--signal-delay-s", "120", "--max-timeouts", "5", "--setup", "module load cuda",
                        "--sbatch", " --reservation =r=1", "--sbatch", "exclusive=", "--sbatch", "Xkey=x")
    assert sweep._settings_from(args) == ExecutorSettings(
        executor="slurm", partition="gpu", time="2:00:00", gpus_per_task=4, procs_per_task=2, cpus_per_task=8,
        mem_gb=64.0, max_parallel=3, account="acc", qos="high", constraint="a100", exclude="n[1-2]",
        signal_delay_s=120, max_timeouts=5, setup=["module load cuda"],
        additional={"reservation": "r=1", "exclusive": "", "Xkey": "x"})
    assert sweep._settings_from(_status_args()) == ExecutorSettings()


def test_settings_from_stored_file_and_command_line(tmp_path):
    stored = ExecutorSettings(executor="slurm", partition="old", time="30", setup=["a"], additional={"x": "1"})
    (tmp_path / "s.json").write_text(json.dumps({"partition": "file", "qos": "fq", "additional": {"y": "2"}}))
    args = _status_args("--slurm-config", str(tmp_path / "s.json"), "--qos", "cli", "--setup", "b", "--sbatch", "z=3")
    assert sweep._settings_from(args, stored) == ExecutorSettings(
        executor="slurm", partition="file", time="30", qos="cli", setup=["a", "b"],
        additional={"y": "2", "z": "3"})
    kept = sweep._settings_from(_status_args("--max-parallel", "2"), stored)
    assert kept == ExecutorSettings(executor="slurm", partition="old", time="30", max_parallel=2, setup=["a"],
                                    additional={"x": "1"})
    assert stored.setup == ["a"] and stored.additional == {"x": "1"}  # the stored settings are not changed


def test_settings_errors_in_full(tmp_path):
    def error(*argv):
        with pytest.raises(SystemExit) as exc:
            sweep._settings_from(_status_args(*argv))
        return str(exc.value)

    assert error("--sbatch", "exclusive") == "error: --sbatch 'exclusive': use KEY=VALUE"
    missing = tmp_path / "none.toml"
    assert error("--slurm-config", str(missing)) == \
        f"error: executor config file {missing} does not exist (expected JSON or TOML)"
    assert error("--max-parallel", "0") == "error: max_parallel must be >= 1"


@pytest.fixture
def fake_sweep(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    f = SimpleNamespace(grids=[], runs=[], cells=["c1"])
    monkeypatch.setattr(sweep, "plan_cells", lambda grid: f.grids.append(grid) or f.cells)
    monkeypatch.setattr(sweep, "run_cells", lambda *a, **kw: f.runs.append((a, kw)) or 7)
    return f


def test_sweep_main_default_folder_settings_and_flags(fake_sweep, tmp_path):
    argv = ["--methods", "rein,tqdm", "--seeds", "2", "--iters", "4", "--dry-run", "--wait", "--poll-s", "1.5",
            "--max-parallel", "2"]
    assert sweep.sweep_main(argv) == 7
    grid = {"methods": ["rein", "tqdm"], "protocols": ["gta2cbm"], "variants": ["default"], "backbones": [],
            "seeds": [0, 1], "run_args": ["--iters", "4"], "kind": "run"}
    digest = hashlib.sha256(json.dumps(grid, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (sweep_dir, cells, settings, given), kw = fake_sweep.runs[0]
    assert sweep_dir == tmp_path / "runs" / "sweeps" / f"sweep-{digest[:8]}"
    assert cells == ["c1"] and given == argv and settings == ExecutorSettings(max_parallel=2)
    assert kw == {"dry_run": True, "resubmit_failed": False, "wait": True, "poll_s": 1.5}
    assert fake_sweep.grids == [sweep.Grid(methods=["rein", "tqdm"], protocols=["gta2cbm"], variants=[],
                                           backbones=[], seeds=[0, 1], run_args=["--iters", "4"])]
    # variants and seeds left to the profile name the folder as ["default"] / [0] did
    sweep.sweep_main(["--methods", "rein", "--resubmit-failed"])
    grid = {**grid, "methods": ["rein"], "seeds": [0], "run_args": []}
    digest = hashlib.sha256(json.dumps(grid, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (sweep_dir, *_), kw = fake_sweep.runs[1]
    assert sweep_dir == tmp_path / "runs" / "sweeps" / f"sweep-{digest[:8]}"
    assert kw == {"dry_run": False, "resubmit_failed": True, "wait": False, "poll_s": 5.0}


def test_sweep_main_reuses_the_folders_executor_settings(fake_sweep, tmp_path):
    with sweep.edit_manifest(tmp_path / "given") as m:
        m["executor"] = ExecutorSettings(executor="slurm", partition="gpu", max_parallel=4).to_dict()
    sweep.sweep_main(["--methods", "m", "--out", "given", "--max-parallel", "8"])
    (sweep_dir, _, settings, _), _ = fake_sweep.runs[0]
    assert sweep_dir == tmp_path / "given" and sweep_dir.is_absolute()
    assert settings == ExecutorSettings(executor="slurm", partition="gpu", max_parallel=8)


@pytest.fixture
def fake_status(monkeypatch, tmp_path):
    f = SimpleNamespace(dir=tmp_path / "sw", calls=[], statuses=[sweep.CellStatus("k1", "n1", {"seed": 0}, "done")],
                        after=[sweep.CellStatus("k1", "n1", {"seed": 0}, "running")])
    with sweep.edit_manifest(f.dir) as m:
        m["executor"] = ExecutorSettings(executor="slurm", partition="gpu").to_dict()

    def cell_statuses(sweep_dir, manifest=None):
        f.calls.append(("statuses", sweep_dir, None if manifest is None else sorted(manifest)))
        return f.statuses if manifest is not None else f.after

    def wait_for_cells(sweep_dir, *, poll_s, log):
        f.calls.append(("wait", sweep_dir, poll_s, log))
        return f.statuses

    monkeypatch.setattr(sweep, "cell_statuses", cell_statuses)
    monkeypatch.setattr(sweep, "wait_for_cells", wait_for_cells)
    monkeypatch.setattr(sweep, "resubmit_failed", lambda d, s, *, statuses: f.calls.append(("resubmit", d, s, statuses)))
    return f


def test_status_prints_the_table_or_json(fake_status, capsys, monkeypatch):
    monkeypatch.chdir(fake_status.dir.parent)
    assert sweep.status_main(["sw"]) == 0
    assert capsys.readouterr().out == sweep.format_status(fake_status.statuses) + "\n"
    assert fake_status.calls == [("statuses", fake_status.dir,
                                  ["cells", "created", "executor", "invocations", "schema", "updated"])]
    fake_status.statuses[0].state = "failed"
    assert sweep.status_main([str(fake_status.dir), "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == [fake_status.statuses[0].to_dict()]


def test_status_json_is_indented(fake_status, capsys):
    sweep.status_main([str(fake_status.dir), "--json"])
    assert capsys.readouterr().out == json.dumps([fake_status.statuses[0].to_dict()], indent=2) + "\n"


def test_status_wait_and_resubmit(fake_status, capsys):
    assert sweep.status_main([str(fake_status.dir), "--wait", "--poll-s", "0.5"]) == 0
    assert fake_status.calls == [("wait", fake_status.dir, 0.5, print)]
    fake_status.calls.clear()
    sweep.status_main([str(fake_status.dir), "--wait", "--json"])
    assert fake_status.calls == [("wait", fake_status.dir, 5.0, None)]  # --json: no progress lines
    fake_status.calls.clear()
    capsys.readouterr()
    assert sweep.status_main([str(fake_status.dir), "--resubmit-failed", "--max-parallel", "3"]) == 0
    first, resubmit, after = fake_status.calls
    assert first[0] == "statuses" and after == ("statuses", fake_status.dir, None)
    assert resubmit == ("resubmit", fake_status.dir, ExecutorSettings(executor="slurm", partition="gpu",
                                                                      max_parallel=3), fake_status.statuses)
    assert capsys.readouterr().out == sweep.format_status(fake_status.after) + "\n"  # the states after resubmitting


def test_status_resubmit_of_a_folder_without_stored_settings(fake_status):
    manifest = json.loads((fake_status.dir / "manifest.json").read_text())
    manifest["executor"] = {}
    (fake_status.dir / "manifest.json").write_text(json.dumps(manifest))
    sweep.status_main([str(fake_status.dir), "--resubmit-failed"])
    assert fake_status.calls[1][2] == ExecutorSettings()


def test_status_of_a_folder_without_a_manifest(tmp_path):
    with pytest.raises(SystemExit) as exc:
        sweep.status_main([str(tmp_path)])
    assert str(exc.value) == (f"error: {tmp_path} has no manifest.json: not a sweep folder "
                              "(create one with python -m runners.sweep --methods ... --out DIR)")


def test_main_dispatch(monkeypatch):
    calls = []
    monkeypatch.setattr(sweep, "status_main", lambda argv: calls.append(("status", argv)) or 3)
    monkeypatch.setattr(sweep, "sweep_main", lambda argv: calls.append(("sweep", argv)) or 4)
    assert sweep.main(["status", "d", "--json"]) == 3
    assert sweep.main(["submit", "--methods", "m"]) == 4
    assert sweep.main(["--methods", "status"]) == 4
    assert sweep.main([]) == 4
    monkeypatch.setattr(sweep.sys, "argv", ["sweep", "status", "x"])
    assert sweep.main() == 3
    assert calls == [("status", ["d", "--json"]), ("sweep", ["--methods", "m"]), ("sweep", ["--methods", "status"]),
                     ("sweep", []), ("status", ["x"])]
    assert sweep.MANIFEST_FILE == "manifest.json" and sweep.MANIFEST_SCHEMA == 1
