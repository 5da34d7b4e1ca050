"""The new protocols through ``runners.run`` on the miniature benchmark (ACDC and SYNTHIA domains included),
with a tiny stand-in method: 16-class reporting in the record and the leaderboard, dataset fingerprints,
two training sources, rare-class sampling, ACDC test export, and bad files named without losing results."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmarks.evaluate import EvaluationError, load_confusions
from benchmarks.export import main as export_main
from benchmarks.metrics import classes_subset_miou, mean_iou
from datasets import DatasetLayoutError
from datasets.miniature import MiniatureParams, ensure_miniature
from methods.base import Method, MethodConfig, TrainRecipe
from reports.leaderboard import main as leaderboard_main
from runners import run as run_mod


class TinyMethod(Method):
    """A 1x1 convolution: the runner's plumbing without a real model's cost."""

    name = "tiny_test"
    backbones = ("none",)
    rare_class_sampling = None

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        self.head = nn.Conv2d(3, 19, 1)

    @classmethod
    def default_config(cls, backbone=None, *, scale="paper"):
        return MethodConfig(backbone="none", scale=scale)

    @classmethod
    def recipe(cls, *, source="gta5", scale="paper", backbone=None):
        return TrainRecipe(iterations=1, batch_size=2, lr=1e-3, crop_size=(64, 64), checkpoint_interval=1,
                           log_interval=1, augmentation=dict(rescale="none", cat_max_ratio=1.0, photometric=False),
                           rare_class_sampling=cls.rare_class_sampling)

    def training_step(self, images, labels):
        return {"loss_ce": F.cross_entropy(self.head(self.normalize(images)), labels, ignore_index=255)}

    def predict(self, images):
        return self.head(self.normalize(images))


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory) -> Path:
    return ensure_miniature(tmp_path_factory.mktemp("cache"), params=MiniatureParams(seed=2, count_scale=0.05))


@pytest.fixture(autouse=True)
def tiny(monkeypatch, tmp_path):
    monkeypatch.setenv("DGSS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(run_mod, "get_method_class", lambda name: TinyMethod)
    monkeypatch.setattr(TinyMethod, "rare_class_sampling", None)


def run(argv: list[str]) -> tuple[dict, run_mod.ResolvedRun]:
    args = run_mod.build_parser().parse_args(["--method", "frozen_m2f", "--no-progress", *argv])
    args.method = "tiny_test"
    resolved = run_mod.resolve(args, log=lambda *_: None)
    return run_mod.execute(resolved, args, log=lambda *_: None), resolved


def test_syn2cbm_tqdm_reports_16_classes_with_rare_class_sampling(tmp_path, mini_root, monkeypatch, capsys):
    monkeypatch.setattr(TinyMethod, "rare_class_sampling", dict(class_temp=100.0, min_pixels=50, min_crop_ratio=0.5))
    out = tmp_path / "runs" / "syn"
    record, resolved = run(["--protocol", "syn2cbm", "--eval-variant", "tqdm", "--data-root", str(mini_root),
                            "--out", str(out)])
    res = record["results"]
    for key, value in res["targets"].items():
        _, cms = load_confusions(out / value["confusion"])
        cm = cms.sum(0)
        assert value["num_classes"] == 16 and len(value["per_class_iou"]) == 19
        assert value["miou"] == pytest.approx(classes_subset_miou(cm, [c for c in range(19) if c not in (9, 14, 16)]))
        assert value["miou_19"] == pytest.approx(mean_iou(cm))
        assert "terrain" not in value["classes_reported"]
    assert res["reference"]["num_classes"] == 16
    assert res["rpd"]["cityscapes"] == pytest.approx(100 * res["targets"]["cityscapes"]["miou"] / res["reference"]["miou"])
    assert record["eval_variant"] == "tqdm"
    # fingerprints of every split read, also in the spec
    assert set(record["datasets"]) == {"synthia/all", "cityscapes/val", "bdd100k/val", "mapillary/validation",
                                       "synthia/val"}
    assert record["spec"]["datasets"] == record["datasets"]
    assert all(len(v) == 16 for v in record["datasets"].values())
    # rare-class sampling was used and recorded
    rcs = record["train"]["rare_class_sampling"]
    assert rcs["config"]["class_temp"] == 100.0 and "road" in rcs["class_probabilities"]
    assert record["spec"]["recipe"]["rare_class_sampling"]["min_pixels"] == 50
    # the 16-class number is what the leaderboard shows
    assert "[16 cls]" in run_mod.summary_table(record)
    capsys.readouterr()
    assert leaderboard_main([str(tmp_path / "runs")]) == 0
    table = capsys.readouterr().out
    assert f"{res['targets']['cityscapes']['miou']:.2f}" in table and "syn2cbm [tqdm]" in table


def test_gtasyn2cbm_trains_on_both_sources(tmp_path, mini_root):
    record, resolved = run(["--protocol", "gtasyn2cbm", "--data-root", str(mini_root), "--out", str(tmp_path / "r"),
                            "--no-reference"])
    assert [s["dataset"] for s in record["spec"]["protocol"]["extra_sources"]] == ["synthia"]
    assert {"gta5/all", "synthia/all"} <= set(record["datasets"])
    assert record["train"]["iterations"] == 1
    assert set(record["results"]["targets"]) == {"cityscapes", "bdd100k", "mapillary"}
    assert record["results"]["targets"]["cityscapes"]["num_classes"] == 19
    assert "miou_19" not in record["results"]["targets"]["cityscapes"]


def test_city2acdc_eval_only_export(tmp_path, mini_root):
    out = tmp_path / "acdc"
    record, _ = run(["--protocol", "city2acdc", "--data-root", str(mini_root), "--out", str(out), "--eval-only",
                     "--eval-untrained", "--export"])
    targets = record["results"]["targets"]
    assert list(targets) == ["acdc-fog", "acdc-night", "acdc-rain", "acdc-snow"]
    assert record["results"]["mean_miou"] == pytest.approx(np.mean([t["miou"] for t in targets.values()]))
    assert "acdc/test" in record["datasets"] and "cityscapes/train" not in record["datasets"]  # eval only
    exp = record["exports"]["acdc-test"]
    assert exp["id_format"] == "labelIds" and (out / exp["zip"]).is_file()
    pngs = sorted((out / exp["dir"]).rglob("*_rgb_anon.png"))
    assert len(pngs) == exp["num_images"] == 4
    assert set(np.unique(np.asarray(Image.open(pngs[0]))).tolist()) <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23,
                                                                        24, 25, 26, 27, 28, 31, 32, 33}
    assert export_main([str(out / "export"), "--data-root", str(mini_root), "--protocol", "city2acdc"]) == 0
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk["exports"] == record["exports"]


def copy_root_with(mini_root: Path, dst: Path, copied: str) -> Path:
    dst.mkdir()
    shutil.copy(mini_root / "MINIATURE.json", dst / "MINIATURE.json")
    for entry in mini_root.iterdir():
        if entry.is_dir():
            if entry.name == copied:
                shutil.copytree(entry, dst / entry.name)
            else:
                (dst / entry.name).symlink_to(entry)
    return dst


def test_bad_label_mid_evaluation_is_named_and_finished_images_kept(tmp_path, mini_root):
    root = copy_root_with(mini_root, tmp_path / "data", "cityscapes")
    labels = sorted((root / "cityscapes/gtFine/val").rglob("*_gtFine_labelIds.png"))
    assert len(labels) >= 2
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(labels[1])  # wrong size: a broken file mid-split
    out = tmp_path / "run"
    with pytest.raises(EvaluationError) as err:
        run(["--protocol", "gta2cbm", "--data-root", str(root), "--out", str(out), "--eval-only",
             "--eval-untrained", "--no-reference"])
    msg = str(err.value)
    assert "image #1" in msg and str(labels[1]) in msg and "confusion_cityscapes.partial.npz" in msg
    names, cms = load_confusions(out / "eval" / "confusion_cityscapes.partial.npz")
    assert len(names) == 1 and cms.shape == (1, 19, 19)


def test_partial_download_stops_before_training(tmp_path, mini_root):
    root = copy_root_with(mini_root, tmp_path / "data", "synthia")
    victim = sorted((root / "synthia/GT/LABELS").glob("*.png"))[0]
    victim.unlink()
    out = tmp_path / "run"
    with pytest.raises(DatasetLayoutError) as err:
        run(["--protocol", "syn2cbm", "--data-root", str(root), "--out", str(out)])
    assert victim.name in str(err.value) and "no label file" in str(err.value)
    assert not (out / "checkpoints").exists()


def test_spec_of_recipes_without_rcs_is_unchanged():
    d = run_mod.recipe_dict(TrainRecipe())
    assert "rare_class_sampling" not in d and "gta_split" in d
    assert run_mod.recipe_dict(TrainRecipe(rare_class_sampling={"class_temp": 1.0}))["rare_class_sampling"]
    from benchmarks.protocols import get_protocol

    p = run_mod.with_source_splits(get_protocol("gtasyn2cbm"), "train")
    assert [(s.dataset, s.split) for s in p.sources] == [("gta5", "train"), ("synthia", "train")]
    p = run_mod.with_source_splits(get_protocol("gtasyn2cbm"), "official_train")
    assert [(s.dataset, s.split) for s in p.sources] == [("gta5", "official_train"), ("synthia", "all")]
    assert torch.is_tensor(TinyMethod(MethodConfig()).predict(torch.zeros(1, 3, 4, 4)))
