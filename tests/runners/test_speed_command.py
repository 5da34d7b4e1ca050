"""runners.speed (the speed benchmark's command) on a CPU with the miniature configs: the fp32-eager vs optimised
table, the trainer's own step and optimizer being what is timed, activation checkpointing, batched windows, and
--data end to end (its last line is the worst ratio vs the plain baseline)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from benchmarks.evaluate import infer_logits
from benchmarks.protocols import InferenceSpec
from runners import speed, train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def frozen_m2f():
    return speed.resolve_method("frozen_m2f", scale="miniature", batch_size=2, res=64, eval_res=64, eval_batch=2)


def test_cli_prints_fp32_eager_vs_optimized_table_and_equal_flops(tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = speed.main(["--method", "frozen_m2f", "--scale", "miniature", "--device", "cpu", "--batch-size", "2",
                     "--res", "64", "--eval-res", "64", "--eval-batch", "2", "--steps", "1", "--warmup", "1",
                     "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    table = text[text.index("metric"):]
    header = table.splitlines()[0]
    assert "fp32 eager" in header and "optimized" in header and "ratio" in header
    for row in ("train img/s", "train GFLOP/img", "train MFU %", "eval windows/s", "eval TFLOP/s"):
        assert row in table
    report = json.loads(out.read_text())
    train, ev = report["train"], report["eval"]
    assert set(train) == set(ev) == {"fp32_eager", "optimized"}
    flops = {m: train[m]["flops_per_step"] for m in train}
    assert flops["fp32_eager"] > 0 and flops["fp32_eager"] == flops["optimized"]
    assert ev["fp32_eager"]["flops_per_call"] > 0 and ev["fp32_eager"]["flops_per_call"] == ev["optimized"]["flops_per_call"]
    # attention FLOPs are part of the count (CPU SDPA kernel included)
    assert sum(train["optimized"]["flop_detail"]["attention_flops"].values()) > 0
    assert all(train[m]["img_per_s"] > 0 and math.isfinite(train[m]["first_loss"]) for m in train)
    assert report["attention"]["all_timm_fused"]
    assert report["modes"]["optimized"]["settings"] != report["modes"]["fp32_eager"]["settings"]


def test_grad_checkpointing_same_loss_and_grads_finetuned_backbone(frozen_m2f):
    config = dataclasses.replace(frozen_m2f.config)
    config.vit = dataclasses.replace(config.vit, frozen=False)  # fine-tuned backbone: checkpointing applies
    spec = speed.resolve_method("frozen_m2f", scale="miniature", res=64, config=config)
    res = speed.check_grad_checkpointing(spec, batch=2, res=(64, 64))
    assert res["recomputed_blocks"] == config.vit.depth and res["recomputed_blocks_without"] == 0
    assert res["loss_abs_diff"] <= 1e-5 * max(1.0, abs(res["loss_without"]))
    assert res["max_rel_grad_diff"] < 1e-4 and res["num_grads"] > 0


def test_grad_checkpointing_frozen_backbone_with_trainable_refinement():
    """Rein: frozen backbone in eval mode, gradients reach its tokens through the blocks: checkpointed too."""
    from methods.registry import list_methods

    if "rein" not in list_methods():
        pytest.skip("rein is not registered yet")
    spec = speed.resolve_method("rein", scale="miniature", res=64)
    res = speed.check_grad_checkpointing(spec, batch=2, res=(64, 64))
    depth = spec.config.vit.depth
    assert res["recomputed_blocks"] == depth - 1  # block 0 sees no trainable input
    assert res["loss_abs_diff"] <= 1e-5 * max(1.0, abs(res["loss_without"]))
    assert res["max_rel_grad_diff"] < 1e-4


def test_batched_windows_give_the_same_slide_scores(frozen_m2f):
    method = frozen_m2f.build(torch.device("cpu")).eval()
    image = torch.rand(1, 3, 100, 150, generator=torch.Generator().manual_seed(3)) * 255
    spec = InferenceSpec(mode="slide", crop_size=(64, 64), stride=(43, 43))
    with torch.inference_mode():
        one = infer_logits(method.predict, image, spec, 19, batch_windows=1)
        eight = infer_logits(method.predict, image, spec, 19, batch_windows=8)
    # same windows and stitching; batched matmuls may round differently in the last bits
    torch.testing.assert_close(eight, one, rtol=1e-5, atol=1e-5)
    assert torch.equal(eight.argmax(1), one.argmax(1))




def test_the_benchmark_times_the_trainers_own_step_and_optimizer(monkeypatch, frozen_m2f):
    assert speed.MODELS.trainer.train_step is train.train_step
    assert speed.MODELS.trainer.build_optimizer is train.build_optimizer
    calls = []
    original = train.train_step

    def spy(*args, **kwargs):
        calls.append(kwargs["grad_clip"])
        return original(*args, **kwargs)

    parts = dataclasses.replace(speed.MODELS.trainer, train_step=spy)
    images, labels = speed.synthetic_batch(2, (64, 64), seed=1)
    from benchmarks.speed import bench_train, optimized_mode

    res = bench_train(frozen_m2f, optimized_mode(torch.device("cpu")), images, labels, trainer=parts, steps=1,
                      warmup=1, device=torch.device("cpu"), count=False)
    assert calls and math.isfinite(res["first_loss"]) and res["img_per_s"] > 0


def test_train_recipes_group_methods_with_one_augmentation():
    recipes = speed.train_recipes()
    names = [n for group in recipes for n in group.split("/")]
    assert {"rein", "tqdm", "vltseg", "famix"} <= set(names) and len(names) == len(set(names))
    rein = next(aug for group, (aug, _) in recipes.items() if "rein" in group.split("/"))
    assert rein.rescale == "short_edge_choices" and rein.crop_size == (512, 512)


def test_data_mode_prints_both_columns_and_ends_with_the_worst_ratio(tmp_path, capsys):
    out = tmp_path / "data.json"
    rc = speed.main(["--data", "--data-size", "96x160", "--data-images", "1", "--data-reps", "1", "--no-miniature",
                     "--no-scoring", "--fixtures", str(tmp_path / "no_fixtures"), "--data-workers", "0,1",
                     "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out.strip().splitlines()
    assert text[-1].startswith("worst ratio vs baseline: ")
    assert any("ours CPU ms/img" in line and "plain cv2 CPU ms/img" in line and "ratio" in line for line in text)
    report = json.loads(out.read_text())["data"]
    cases = [r["case"] for r in report["loading"]]
    assert any(c.startswith("train rein") for c in cases) and "eval bdd100k (bdd-size 1280x720)" in cases
    assert all(r["identical"] for r in report["loading"])
    assert [r["workers"] for r in report["loader"]] == [0, 1]
    assert float(text[-1].split(": ")[1]) == pytest.approx(max(r["ratio"] for r in report["loading"]), abs=1e-3)


def test_default_workers_follow_the_measured_need(monkeypatch):
    from benchmarks.speed import TARGETS
    from runners import run

    assert set(TARGETS) <= set(run.LOADER_WORKERS_PER_GPU)  # every method with a target speed has its number
    monkeypatch.setattr(run.os, "cpu_count", lambda: 64)
    cuda = torch.device("cuda")
    assert run.default_workers(cuda, "rein") == 2 * run.LOADER_WORKERS_PER_GPU["rein"]
    assert run.default_workers(cuda, "tqdm") == 2 * run.LOADER_WORKERS_PER_GPU["tqdm"]
    assert run.default_workers(torch.device("cpu"), "rein") == 0
    monkeypatch.setattr(run.os, "cpu_count", lambda: 4)
    assert run.default_workers(cuda, "rein") == 3  # never more than the cores per process minus one


def test_famix_is_benchmarked_with_a_synthetic_style_bank(tmp_path, capsys):
    """FAMix trains with style mixing from a mined bank; the speed benchmark stands in a synthetic bank of
    the same shape (same sampling and mixing cost) instead of crashing for want of one."""
    out = tmp_path / "speed.json"
    rc = speed.main(["--method", "famix", "--scale", "miniature", "--device", "cpu", "--batch-size", "2",
                     "--res", "64", "--eval-res", "64", "--eval-batch", "1", "--steps", "1", "--warmup", "1",
                     "--json", str(out)])
    assert rc == 0
    train_rows = json.loads(out.read_text())["train"]
    assert all(train_rows[m]["img_per_s"] > 0 for m in train_rows)
    spec = speed.resolve_method("famix", scale="miniature")
    method = spec.build(torch.device("cpu"))
    assert method.style_bank is not None and method.style_bank.meta == {"synthetic": True}
    assert method.style_bank.channels == spec.config.resnet.channels[0]
