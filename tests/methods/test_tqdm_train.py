"""tqdm trains: losses fall on a small overfit problem, and it runs end to end on a tiny miniature benchmark."""

import json

import pytest
import torch

from methods.registry import create_method
from methods.tqdm import tqdm_recipe
from runners.run import main as run_main
from runners.train import build_optimizer


def test_overfit_losses_decrease(toy_scene, overfit):
    torch.manual_seed(0)
    method = create_method("tqdm", scale="miniature")
    optimizer = build_optimizer(method, tqdm_recipe("gta5", "miniature"))
    images, labels = toy_scene
    history = overfit(method, optimizer, images, labels, 25)
    first, last = history[0], history[-1]
    assert last["total"] < 0.5 * first["total"]
    for key in ("loss_cls", "loss_reg_vision_language", "loss_reg_language"):
        assert sum(h[key] for h in history[-3:]) < sum(h[key] for h in history[:3]), key
    method.eval()
    with torch.no_grad():
        pred = method.predict(images).argmax(1)
    assert (pred == labels).float().mean() > 0.9


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    from datasets.miniature import MiniatureParams, ensure_miniature

    params = MiniatureParams(count_scale=0.05, domains=("gta5", "cityscapes", "bdd100k", "mapillary"))
    return ensure_miniature(tmp_path_factory.mktemp("mini"), params=params)


def test_end_to_end_on_a_tiny_miniature_benchmark(tmp_path, small_root, capsys):
    out = tmp_path / "run"
    code = run_main(["--method", "tqdm", "--protocol", "gta2cbm", "--data-root", str(small_root),
                     "--iters", "2", "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    assert "MINIATURE benchmark" in capsys.readouterr().out
    record = json.loads((out / "result.json").read_text())
    assert record["method"] == "tqdm" and record["miniature"] is True and record["train"]["iterations"] == 2
    assert set(record["results"]["targets"]) == {"cityscapes", "bdd100k", "mapillary"}
    assert record["spec"]["protocol"]["source"]["split"] == "train"  # RobustNet GTA split
    assert set(record["train"]["final_losses"]) >= {"loss_reg_language", "loss_reg_vision_language",
                                                   "loss_reg_vision", "loss_cls"}
    ckpt = torch.load(out / "model_final.pt", weights_only=True)
    assert not any(k.startswith(("reg_E0.", "text_encoder.")) for k in ckpt)
    assert record["params"]["per_module"]["reg_E0"]["trainable"] == 0
