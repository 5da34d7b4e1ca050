"""runners.run end to end on a small miniature benchmark, exact resume, dry-run, clear errors."""

import hashlib
import json

import numpy as np
import pytest
import torch

from benchmarks.predictions import prediction_files, read_palette_png, split_image_names
from benchmarks.protocols import Protocol, load_split
from datasets.loaders import build_dataset
from datasets.transforms import TrainAugmentation, TrainTransform
from methods.miniature_weights import MINIATURE_WEIGHTS, MINIATURE_WEIGHTS_DIR, read_sha256sums
from methods.registry import create_method
from reports.leaderboard import main as leaderboard_main
from runners.run import build_parser, resolve
from runners.run import main as run_main
from runners.loggers import loss_names, read_event_scalars
from runners.train import Trainer


def test_dry_run_reports_dinov2_large_frozen_params(capsys):
    assert run_main(["--method", "frozen_m2f", "--protocol", "gta2cbm", "--dry-run"]) == 0
    spec = json.loads(capsys.readouterr().out)
    backbone = spec["params"]["per_module"]["backbone"]
    assert backbone["trainable"] == 0
    assert 304_000_000 < backbone["total"] < 304_500_000  # DINOv2-L, patch embed converted 14 -> 16
    assert spec["params"]["trainable"] == spec["params"]["per_module"]["decode_head"]["trainable"]
    assert spec["model"]["vit"]["embed_dim"] == 1024 and spec["model"]["head"]["num_queries"] == 100
    assert spec["recipe"]["iterations"] == 40000 and spec["recipe"]["batch_size"] == 4
    assert spec["protocol"]["miniature"] is False
    assert spec["pretrained_files"] == ["dinov2_vitl14_pretrain.pth"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_missing_dataset_gives_the_clear_error(tmp_path, capsys):
    code = run_main(["--method", "frozen_m2f", "--protocol", "gta2cbm", "--data-root", str(tmp_path),
                     "--allow-random-init", "--iters", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    message = _one_error_line(capsys)
    assert str(tmp_path / "gta") in message and "images" in message and "fix: " in message
    assert "weights" not in message  # an empty data root is missing data, not missing weights
    assert not (tmp_path / "run").exists()


def test_real_data_without_weights_is_an_error(tmp_path, mini_root, capsys):
    # a data root that is not marked miniature counts as real data: missing weights must stop the run
    real_like = tmp_path / "data"
    real_like.mkdir()
    for name in ("gta", "cityscapes", "bdd100k", "mapillary"):
        (real_like / name).symlink_to(mini_root / name)
    code = run_main(["--method", "frozen_m2f", "--protocol", "gta2cbm", "--data-root", str(real_like),
                     "--weights-dir", str(tmp_path), "--iters", "1", "--out", str(tmp_path / "run")])
    assert code == 2
    message = _one_error_line(capsys)
    assert "dinov2_vitl14_pretrain.pth" in message and "--allow-random-init" in message
    assert not (tmp_path / "run").exists()


def _trainer(method, root, out, stop_after=None, iterations=6):
    recipe = type(method).recipe(scale="miniature").replace(
        iterations=iterations, batch_size=2, checkpoint_interval=2, log_interval=1, crop_size=(128, 128))
    aug = TrainAugmentation(crop_size=recipe.crop_size, **recipe.augmentation)
    dataset = build_dataset("gta5", "train", root, transform=TrainTransform(aug))
    return Trainer(method, recipe, dataset, out_dir=out, seed=7, device=torch.device("cpu"),
                   spec_hash="test", progress=False, log=lambda *_: None, stop_after=stop_after)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_resume_gives_the_same_loss_sequence(tmp_path, mini_root):
    torch.manual_seed(0)
    straight = create_method("frozen_m2f", scale="miniature")
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    _trainer(straight, mini_root, tmp_path / "a").run(resume=False)

    interrupted = create_method("frozen_m2f", scale="miniature")
    interrupted.load_state_dict(init)
    _trainer(interrupted, mini_root, tmp_path / "b", stop_after=3).run(resume=False)  # "killed" after 3 its
    assert len(_losses(tmp_path / "b")) == 3
    # a fresh process: runners.run seeds before building, so the frozen (random-init) backbone is the same;
    # the trainable state comes from the checkpoint
    torch.manual_seed(0)
    resumed = create_method("frozen_m2f", scale="miniature")
    _trainer(resumed, mini_root, tmp_path / "b").run(resume=True)  # resumes from the checkpoint at it 2

    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    a, b = straight.checkpoint_state_dict(), resumed.checkpoint_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_random_init_skips_the_miniature_standins_and_changes_the_run_identity(mini_root):
    def resolved(*extra):
        args = build_parser().parse_args(["--method", "rein", "--data-root", str(mini_root), *extra])
        return resolve(args, log=lambda *_: None)

    shipped, random_init = resolved(), resolved("--random-init")
    assert shipped.weights_dir == MINIATURE_WEIGHTS_DIR and random_init.weights_dir is None
    assert shipped.spec["miniature_weights"] == {"dinov2_tiny_pretrain.pth": read_sha256sums()["dinov2_tiny_pretrain.pth"]}
    assert random_init.spec["miniature_weights"] == {} and random_init.spec["random_init"] is True
    assert shipped.spec_hash != random_init.spec_hash


@pytest.mark.parametrize("method", ["tqdm", "rein", "set", "famix", "vireo", "vltseg", "frozen_m2f"])
def test_a_run_identity_keeps_the_digests_of_the_standins_its_method_loads_and_no_others(mini_root, method):
    """A retrained Depth-Anything stand-in re-keys Vireo's runs, not tqdm's: the spec keeps the sha256 of the files
    the method loads, which the stand-ins' own table (``used_by``) lists independently; the built model loads
    exactly those files."""
    args = build_parser().parse_args(["--method", method, "--data-root", str(mini_root)])
    run = resolve(args, log=lambda *_: None)
    used = {file for file, weights in MINIATURE_WEIGHTS.items() if method in weights.used_by}
    sums = read_sha256sums()
    assert run.spec["miniature_weights"] == {file: sums[file] for file in used}
    assert set(run.method_class.pretrained_files(run.config)) == used
    torch.manual_seed(0)
    assert set(run.method_class(run.config).pretrained_loaders()) == used


def test_end_to_end_record_and_leaderboard(tmp_path, mini_root, capsys):
    out = tmp_path / "run"
    code = run_main(["--method", "frozen_m2f", "--protocol", "gta2cbm", "--data-root", str(mini_root),
                     "--iters", "3", "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "MINIATURE benchmark" in text and "cityscapes" in text and "rPD" in text
    record = json.loads((out / "result.json").read_text())
    assert record["miniature"] is True and record["benchmark"] == "miniature"
    # the shipped miniature DINOv2 stand-in, recorded with its sha256 (methods.miniature_weights)
    assert record["pretrained"] is True
    assert record["weights"]["files"]["dinov2_tiny_pretrain.pth"]["sha256"] == hashlib.sha256(
        (MINIATURE_WEIGHTS_DIR / "dinov2_tiny_pretrain.pth").read_bytes()).hexdigest()
    assert record["spec"]["miniature_weights"]["dinov2_tiny_pretrain.pth"] == \
        record["weights"]["files"]["dinov2_tiny_pretrain.pth"]["sha256"]
    assert set(record["results"]["targets"]) == {"cityscapes", "bdd100k", "mapillary"}
    assert record["results"]["reference"]["key"] == "gta5"
    for key, value in record["results"]["targets"].items():
        with np.load(out / value["confusion"]) as z:  # the score, recomputed from the per-image matrices
            cm = z["confusion"].sum(0).astype(np.float64)
            assert z["confusion"].shape[0] == value["num_images"] > 0
        tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
        assert value["miou"] == pytest.approx(100 * np.mean(tp[union > 0] / union[union > 0]), rel=1e-9)
        assert value["acc"] == pytest.approx(100 * tp.sum() / cm.sum(), rel=1e-9)
        assert len(value["per_class_iou"]) == 19
        assert record["results"]["rpd"][key] == pytest.approx(
            100 * value["miou"] / record["results"]["reference"]["miou"])
    targets = record["results"]["targets"]
    assert record["results"]["mean_miou"] == pytest.approx(sum(t["miou"] for t in targets.values()) / 3)
    assert record["spec"]["protocol"]["miniature"] is True
    assert record["protocol_hash"] == record["spec"]["protocol_hash"]
    assert record["environment"]["packages"]["torch"]
    assert record["params"]["trainable"] > 0 and record["train"]["iterations"] == 3

    # the protocol's gallery images: same names as the seeded rule picks, palette PNGs at the label size
    protocol = Protocol.from_dict(record["spec"]["protocol"])
    for key, value in record["results"]["targets"].items():
        gallery = value["gallery"]
        names = split_image_names(load_split(protocol.split(key), mini_root))
        assert gallery["images"] == protocol.gallery.select(names, key) and len(gallery["images"]) == 4
        for name in gallery["images"]:
            files = prediction_files(out / gallery["dir"], name)
            pred, gt = read_palette_png(files["pred"]), read_palette_png(files["gt"])
            assert pred.shape == gt.shape and set(np.unique(pred)) <= set(range(19))
            assert np.isin(gt, list(range(19)) + [255]).all()
    assert "gallery" not in record["results"]["reference"]
    # TensorBoard: every logged line of train_log.jsonl and the final evaluation, under the documented tags
    assert record["logger"] == {"kind": "tensorboard", "dir": "tensorboard"}
    scalars = read_event_scalars(out / "tensorboard")
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [s for s, _ in scalars["train/loss"]] == [e["iteration"] for e in lines]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([e["loss"] for e in lines], rel=1e-6)
    named = {f"train/{k}" for k in loss_names(lines[0])}
    assert named and named | {"lr/group0", "train/it_per_s"} <= set(scalars)
    assert scalars["eval/cityscapes/mIoU"] == [(3, pytest.approx(record["results"]["targets"]["cityscapes"]["miou"]))]

    assert leaderboard_main([str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "MINIATURE" in table and "frozen_m2f" in table and record["protocol_hash"] in table
