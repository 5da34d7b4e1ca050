"""Ctrl-C / SIGTERM checkpoint at the next iteration boundary and --resume continues training and evaluation;
a full disk is one line and leaves no temporary file; plain progress lines when stderr is not a terminal."""

import errno
import json
import os
import signal

import pytest
import torch

import runners.run as run_mod
from datasets.loaders import build_dataset
from datasets.transforms import TrainAugmentation, TrainTransform
from methods.registry import create_method, get_method_class
from runners import preflight
from runners.interrupt import StopRequest
from runners.preflight import DiskFullError
from runners.records import write_json_atomic
from runners.train import Trainer, TrainingStopped, atomic_torch_save


@pytest.fixture(autouse=True)
def default_signal_handlers():
    """Python's default SIGINT/SIGTERM handlers during each test: StopRequest leaves a handler it did not expect
    alone (as it should), and a process started in the background, or mutmut's fork server, ignores SIGINT."""
    previous = {sig: signal.signal(sig, handler)
                for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_stop_request_handlers(monkeypatch):
    seen = []
    submitit_like = lambda signum, frame: seen.append(signum)  # noqa: E731
    previous = signal.signal(signal.SIGTERM, submitit_like)
    try:
        stop = StopRequest(log=seen.append)
        with stop.installed():
            assert signal.getsignal(signal.SIGINT) == stop.handle  # default handler: replaced
            assert signal.getsignal(signal.SIGTERM) is submitit_like  # someone else's handler: left alone
            with stop.training_phase():
                os.kill(os.getpid(), signal.SIGINT)  # first: a request, the loop goes on
                assert stop() and stop.signum == signal.SIGINT
                with pytest.raises(KeyboardInterrupt):  # second: at once
                    os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        outside = StopRequest(log=seen.append)
        with outside.installed(), pytest.raises(KeyboardInterrupt):  # evaluation: at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _trainer(method, root, out, log, should_stop=None):
    recipe = type(method).recipe(scale="miniature").replace(
        iterations=5, batch_size=2, checkpoint_interval=100, log_interval=1, crop_size=(64, 64))
    aug = TrainAugmentation(crop_size=recipe.crop_size, **recipe.augmentation)
    dataset = build_dataset("gta5", "all", root, transform=TrainTransform(aug))
    return Trainer(method, recipe, dataset, out_dir=out, seed=7, device=torch.device("cpu"), spec_hash="test",
                   progress=True, log=log, should_stop=should_stop)


def test_stop_checkpoints_at_the_iteration_boundary_and_resume_is_exact(tmp_path, tiny_miniature_root, capsys):
    torch.manual_seed(0)
    straight = create_method("frozen_m2f", scale="miniature")
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    lines = []
    _trainer(straight, tiny_miniature_root, tmp_path / "a", lines.append).run(resume=False)
    # stderr is not a terminal here: no bar, a plain line per log interval (iteration, losses, lr, it/s, ETA)
    assert "\r" not in capsys.readouterr().err
    assert len(lines) == 5 and lines[2].startswith("iter 3/5  loss ") and " it/s  ETA " in lines[2]

    asked = iter([False, False, True])
    stopped = create_method("frozen_m2f", scale="miniature")
    stopped.load_state_dict(init)
    with pytest.raises(TrainingStopped) as info:
        _trainer(stopped, tiny_miniature_root, tmp_path / "b", lambda *_: None,
                 should_stop=lambda: next(asked)).run(resume=False)
    assert info.value.iteration == 3  # checkpoint_interval is 100: the stop itself saved
    assert torch.load(info.value.checkpoint, weights_only=False)["iteration"] == 3
    torch.manual_seed(0)
    resumed = create_method("frozen_m2f", scale="miniature")
    _trainer(resumed, tiny_miniature_root, tmp_path / "b", lambda *_: None).run(resume=True)
    losses = [[json.loads(ln)["loss"] for ln in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
              for d in ("a", "b")]
    assert losses[0] == losses[1]


def test_sigint_in_training_and_in_evaluation_then_resume(tmp_path, tiny_miniature_root, capsys, monkeypatch):
    """Ctrl-C in training: checkpoint, exit 130, one line; --resume trains on. Ctrl-C in evaluation: the
    per-image results are kept; --resume evaluates only the images that are left."""
    import benchmarks.evaluate as evaluate_mod

    base = get_method_class("frozen_m2f")
    plan = {"step_signal": 2, "image_signal": 3}
    calls = {"steps": 0, "images": 0}

    class Interrupted(base):
        def training_step(self, images, labels):
            calls["steps"] += 1
            if calls["steps"] == plan["step_signal"]:
                os.kill(os.getpid(), signal.SIGINT)
            return super().training_step(images, labels)

    real_infer = evaluate_mod.infer_logits

    def infer_logits(*args, **kwargs):  # once per test image
        calls["images"] += 1
        if calls["images"] == plan["image_signal"]:
            os.kill(os.getpid(), signal.SIGINT)
        return real_infer(*args, **kwargs)

    monkeypatch.setattr(run_mod, "get_method_class", lambda name: Interrupted)
    monkeypatch.setattr(evaluate_mod, "infer_logits", infer_logits)
    out = tmp_path / "run"
    argv = ["--method", "frozen_m2f", "--data-root", str(tiny_miniature_root), "--iters", "4", "--batch-size", "2",
            "--checkpoint-interval", "100", "--out", str(out), "--no-progress"]
    assert run_mod.main(argv) == 128 + signal.SIGINT
    err = capsys.readouterr().err.strip()
    assert err == (f"stopped: SIGINT at iteration 2; checkpoint saved ({out / 'checkpoints' / 'last.pt'}); "
                   "to continue: the same command with --resume")
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["iteration"] == 2
    assert run_mod.main(argv) == 2  # a started run is not restarted by accident
    capsys.readouterr()

    assert run_mod.main(argv + ["--resume"]) == 128 + signal.SIGINT  # trains 2 more, then SIGINT in evaluation
    assert "stopped: SIGINT" in capsys.readouterr().err
    assert calls["steps"] == 4 and not (out / "result.json").exists()
    saved = list((out / "eval").glob("confusion_*.npz"))
    assert saved  # the images evaluated before the signal

    plan["image_signal"] = -1
    calls["images"] = 0
    assert run_mod.main(argv + ["--resume"]) == 0
    record = json.loads((out / "result.json").read_text())
    assert record["train"]["resumed_from"] == 4 and calls["steps"] == 4  # nothing retrained
    total = sum(v["num_images"] for v in record["results"]["targets"].values())
    total += record["results"]["reference"]["num_images"]
    assert calls["images"] == total - 2  # only the images left after the 2 that were kept
    assert not (out / "run.lock").exists() and not list((out / "eval").glob("*.partial.npz"))


def test_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    atomic_torch_save({"iteration": 1}, path)

    def torch_save_on_full_disk(obj, f):  # what torch says when the zip writer hits a full disk
        with open(f, "wb") as handle:
            handle.write(b"PK" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    class Full:
        free = 1 << 20
    monkeypatch.setattr(torch, "save", torch_save_on_full_disk)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda folder: Full)
    with pytest.raises(DiskFullError) as info:
        atomic_torch_save({"iteration": 2}, path)
    line = info.value.line()
    assert line.startswith("error: no space left on the device writing last.pt") and "1 MiB free" in line
    assert "--resume" in line and "\n" not in line
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no last.pt.tmp* left
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"iteration": 1}  # the previous checkpoint is intact

    def enospc(self, text, *args, **kwargs):
        with open(self, "w") as handle:
            handle.write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")
    write_json_atomic(tmp_path / "result.json", {"old": True})
    monkeypatch.setattr(type(tmp_path), "write_text", enospc)
    with pytest.raises(DiskFullError, match="writing result.json"):
        write_json_atomic(tmp_path / "result.json", {"new": True})
    monkeypatch.undo()
    assert json.loads((tmp_path / "result.json").read_text()) == {"old": True}
    assert not list(tmp_path.glob("result.json.tmp*"))

    def other_failure(obj, f):
        raise RuntimeError("unrelated")
    monkeypatch.setattr(torch, "save", other_failure)  # plenty of space: the original error, still no temp file
    with pytest.raises(RuntimeError, match="unrelated"):
        atomic_torch_save({"iteration": 3}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
