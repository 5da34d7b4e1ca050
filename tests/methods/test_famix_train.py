"""FAMix end to end: the runner mines the styles (tiny pass, cached), trains and evaluates FAMix on a tiny
miniature benchmark."""

from __future__ import annotations

import json

import pytest
import torch

from runners.run import main as run_main


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster than two on the shared, busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    from datasets.miniature import MiniatureParams, ensure_miniature

    params = MiniatureParams(count_scale=0.025, domains=("gta5", "cityscapes", "bdd100k", "mapillary"))
    return ensure_miniature(tmp_path_factory.mktemp("mini"), params=params)


def test_end_to_end_on_a_tiny_miniature_benchmark(tmp_path, small_root, capsys, monkeypatch):
    monkeypatch.setenv("DGSS_CACHE_DIR", str(tmp_path / "cache"))
    args = ["--method", "famix", "--protocol", "gta2cbm", "--data-root", str(small_root), "--batch-size", "2",
            "--no-progress"]
    out = tmp_path / "run"
    assert run_main([*args, "--iters", "2", "--out", str(out)]) == 0
    assert "MINIATURE benchmark" in capsys.readouterr().out
    record = json.loads((out / "result.json").read_text())
    assert record["method"] == "famix" and record["miniature"] is True and record["train"]["iterations"] == 2
    assert record["backbone"] == "clip_rn101" and record["spec"]["model"]["train_layer4"] == "last"
    assert record["spec"]["protocol"]["source"]["split"] == "train"  # RobustNet GTA split
    assert set(record["results"]["targets"]) == {"cityscapes", "bdd100k", "mapillary"}
    prepared = record["train"]["prepare"]
    assert prepared["cache_hit"] is False and prepared["num_styles"] > 0
    bank = tmp_path / "cache" / "famix_styles" / f"{prepared['key']}.pt"
    assert bank.is_file()
    ckpt = torch.load(out / "model_final.pt", weights_only=True)
    assert ckpt and all(k.startswith(("decode_head.", "backbone.layer4.2.")) for k in ckpt)
    assert record["params"]["per_module"]["attnpool"]["trainable"] == 0
    # the runner's path again (same spec, same seeded initialisation) finds the mined styles in the cache
    from datasets.transforms import TrainAugmentation, TrainTransform
    from methods.weights import default_hash_cache
    from runners.run import build_parser, resolve, training_dataset

    run = resolve(build_parser().parse_args([*args, "--iters", "2", "--out", str(tmp_path / "again")]),
                  log=lambda *_: None)
    torch.manual_seed(run.seed)
    method = run.method_class(run.config)
    method.load_pretrained(run.weights_dir, allow_random_init=True)  # the shipped stand-ins, as the runner does
    aug = TrainAugmentation(crop_size=run.recipe.crop_size, **run.recipe.augmentation)
    train_set = training_dataset(run, TrainTransform(aug))
    again = method.prepare(train_set, default_hash_cache().parent, lambda *_: None, seed=run.seed)
    assert again["cache_hit"] is True and again["key"] == prepared["key"]
