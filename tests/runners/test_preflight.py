"""runners.preflight: a user's mistake is one line with exit code 2, found before any model is built, and
nothing is written; --help and argument errors import no heavy module."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import runners.run as run_mod
from methods.registry import create_method, list_methods, method_module_names
from runners import preflight
from runners.preflight import UserError, check_batch, check_output_folder, trains_batchnorm


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert "fix: " in err[0]
    return err[0]


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if the run gets as far as building the model."""
    def built(*args, **kwargs):
        raise AssertionError("the model was built: the preflight should have stopped the run")
    monkeypatch.setattr(run_mod, "execute", built)


def _argv(root, out, *extra):
    return ["--method", "frozen_m2f", "--protocol", "gta2cbm", "--data-root", str(root), "--iters", "2",
            "--batch-size", "2", "--out", str(out), "--no-progress", *extra]


def test_help_and_argument_errors_import_no_heavy_module():
    code = (
        "import json, sys\n"
        "from runners.run import main\n"
        "codes = []\n"
        "for argv in (['--help'], ['--method', 'nope'], ['--method', 'rein', '--eval-only'],\n"
        "             ['--method', 'rein', '--eval-variant', 'nope']):\n"
        "    try:\n"
        "        codes.append(main(argv))\n"
        "    except SystemExit as e:\n"
        "        codes.append(e.code)\n"
        "heavy = [m for m in ('torch', 'numpy', 'cv2', 'PIL', 'timm', 'open_clip') if m in sys.modules]\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ},
                          timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 2, 2, 2], "heavy": []}, proc.stderr
    assert "--eval-untrained" in proc.stderr and "--no-progress" in proc.stdout


def test_method_files_are_named_after_their_methods():
    assert method_module_names() == list_methods()  # the cheap --help list is the registry's


def test_eval_only_without_checkpoint_is_refused(tmp_path, capsys, no_build):
    code = run_mod.main(["--method", "rein", "--eval-only", "--out", str(tmp_path / "run")])
    assert code == 2
    line = _one_error_line(capsys)
    assert "randomly initialised" in line and "--checkpoint" in line and "--eval-untrained" in line
    assert not (tmp_path / "run").exists()


def test_checkpoint_problems_fail_before_the_model_is_built(tmp_path, tiny_miniature_root, capsys, no_build):
    torch.manual_seed(0)
    state = create_method("frozen_m2f", scale="miniature").checkpoint_state_dict()
    partial = dict(state)
    dropped = sorted(partial)[0]
    del partial[dropped]
    torch.save(partial, tmp_path / "partial.pt")
    torch.save(state, tmp_path / "full.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:1000])
    cases = {"missing.pt": "checkpoint not found", "truncated.pt": "cannot be read",
             "partial.pt": f"lacks 1 trainable key(s) of frozen_m2f (e.g. {dropped})"}
    for name, expected in cases.items():
        out = tmp_path / f"run-{name}"
        assert run_mod.main(_argv(tiny_miniature_root, out, "--eval-only", "--checkpoint",
                                  str(tmp_path / name))) == 2
        line = _one_error_line(capsys)
        assert expected in line and str(tmp_path / name) in line
        assert not out.exists()
    with pytest.raises(AssertionError, match="was built"):  # a matching checkpoint passes the preflight
        run_mod.main(_argv(tiny_miniature_root, tmp_path / "run-ok", "--eval-only", "--checkpoint",
                           str(tmp_path / "full.pt")))


def test_colour_labels_of_a_target_fail_at_preflight(tmp_path, tiny_miniature_root, capsys, no_build):
    """Cityscapes colour PNGs instead of labelIds: found in seconds, not after training."""
    root = tmp_path / "data"
    root.mkdir()
    for entry in tiny_miniature_root.iterdir():
        if entry.name == "cityscapes":
            shutil.copytree(entry, root / entry.name)
        else:
            (root / entry.name).symlink_to(entry)
    labels = sorted((root / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    assert labels
    for path in labels:
        ids = np.array(Image.open(path))
        Image.fromarray(np.stack([ids, ids, ids], -1).astype(np.uint8), "RGB").save(path)
    assert run_mod.main(_argv(root, tmp_path / "run")) == 2
    line = _one_error_line(capsys)
    assert "cityscapes/val" in line and "label" in line and "python -m datasets.check" in line
    assert not (tmp_path / "run").exists()


def test_output_folder_checks(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="inside a file"):
        check_output_folder(tmp_path / "file" / "run", 0)
    check_output_folder(tmp_path / "new" / "run", 1 << 20)  # the nearest existing parent is checked
    assert not list(tmp_path.glob(".preflight-*"))  # the probe is removed
    assert not (tmp_path / "new").exists()  # nothing created

    class Usage:
        free = 10 << 20
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(UserError, match="not enough free space.*0.01 GiB free") as info:
        check_output_folder(tmp_path, 1 << 30)
    assert "--out" in info.value.line()

    def refuse(self, data):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(preflight.Path, "write_bytes", refuse)
    with pytest.raises(UserError, match="not writable .Permission denied"):
        check_output_folder(tmp_path, 0)


def test_required_bytes_counts_checkpoint_and_confusions():
    # 1M trainable fp32 params: checkpoint with 2 AdamW moments written next to the previous one (6x), the
    # final weights (1x); 1000 images of 19x19 int64 confusion + name; 25 % margin
    expected = 1.25 * (7 * 4 * 1_000_000 + 1000 * (19 * 19 * 8 + 128))
    assert preflight.required_bytes(1_000_000, 1000, trains=True) == int(expected)
    assert preflight.required_bytes(1_000_000, 1000, trains=False) == int(1.25 * 1000 * (19 * 19 * 8 + 128))


def test_batchnorm_batch_rules():
    with torch.device("meta"):
        famix = create_method("famix", scale="miniature")
        baseline = create_method("frozen_m2f", scale="miniature")
    assert trains_batchnorm(famix) and not trains_batchnorm(baseline)
    with pytest.raises(UserError, match="at least 2 samples per batch; batch 1 gives 1"):
        check_batch(1, 1, batchnorm=True, sync_batchnorm=False, name="famix")
    check_batch(8, 8, batchnorm=True, sync_batchnorm=True, name="famix")  # recipe batch 8 on 8 GPUs (SyncBN)
    with pytest.raises(UserError, match="use --batch-size 16"):
        check_batch(8, 8, batchnorm=True, sync_batchnorm=False, name="famix")  # CPU DDP: no SyncBN
    with pytest.raises(UserError, match="does not split over 3 processes"):
        check_batch(8, 3, batchnorm=False, sync_batchnorm=False, name="rein")
    check_batch(1, 1, batchnorm=False, sync_batchnorm=False, name="rein")


def test_famix_batch_one_fails_at_preflight(tmp_path, tiny_miniature_root, capsys, no_build):
    argv = _argv(tiny_miniature_root, tmp_path / "run")
    argv[argv.index("frozen_m2f")] = "famix"
    argv[argv.index("--batch-size") + 1] = "1"
    assert run_mod.main(argv) == 2
    assert "famix trains BatchNorm layers" in _one_error_line(capsys)


def test_sync_batchnorm_replaces_only_trained_layers():
    from runners.distributed import sync_trainable_batchnorm

    torch.manual_seed(0)
    famix = create_method("famix", scale="miniature")
    famix.train()
    trained = {n for n, m in famix.named_modules()
               if isinstance(m, torch.nn.BatchNorm2d) and m.weight.requires_grad}
    frozen = {n for n, m in famix.named_modules()
              if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.requires_grad}
    before = {k: v.clone() for k, v in famix.state_dict().items()}
    assert sync_trainable_batchnorm(famix) == len(trained) > 0 and frozen
    modules = dict(famix.named_modules())
    assert all(type(modules[n]) is torch.nn.SyncBatchNorm and modules[n].training for n in trained)
    assert all(type(modules[n]) is torch.nn.BatchNorm2d and not modules[n].training for n in frozen)
    after = famix.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_user_error_is_one_line_and_survives_pickling():
    import pickle

    error = UserError("a\nb", "/x", "do\nthis")
    assert error.line() == "error: a b (/x); fix: do this"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is UserError and copy.line() == error.line() and str(copy) == error.line()
