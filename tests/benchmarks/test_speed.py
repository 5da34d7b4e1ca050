"""benchmarks.speed on a CPU with the miniature configs: the table, FLOP counting, activation checkpointing,
the data-pipeline mode, protocol geometry, and batched sliding windows / prefetching in evaluation."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks import speed
from benchmarks.evaluate import evaluate_split, infer_logits
from benchmarks.protocols import InferenceSpec, get_protocol


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads made each step ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_flop_counter_counts_cpu_sdpa_forward_and_backward():
    b, h, n, d = 2, 3, 40, 16
    q = torch.randn(b, h, n, d, requires_grad=True)
    res = speed.count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    fwd = 2 * (2 * b * h * n * n * d)  # QK^T and PV
    assert sum(res["attention_flops"].values()) == fwd + 2.5 * fwd  # backward: 5 matmuls of the same size
    assert res["calls"]


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


def test_data_mode_with_0_and_1_workers(tmp_path, capsys):
    out = tmp_path / "data.json"
    rc = speed.main(["--method", "frozen_m2f", "--scale", "miniature", "--device", "cpu", "--data-only",
                     "--data-size", "96x160", "--data-images", "3", "--data-workers", "0,1", "--data-batches", "2",
                     "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["data"]["rows"]
    assert [r["workers"] for r in rows] == [0, 1]
    assert all(r["img_per_s"] > 0 and r["batches"] >= 2 for r in rows)
    assert "img/s (steady)" in capsys.readouterr().out


def test_gta2cbm_geometry():
    rows = {r["key"]: r for r in speed.protocol_geometry(get_protocol("gta2cbm"))}
    assert rows["cityscapes"]["windows_per_image"] == 18  # 1024x2048, slide 512/341: 3 x 6
    assert rows["bdd100k"]["windows_per_image"] == 8  # 720x1280: 2 x 4
    assert rows["mapillary"]["resized_hw"] == [1024, 1365] and rows["mapillary"]["windows_per_image"] == 12
    assert sum(r["images"] for r in rows.values() if not r["reference"]) == 3500


def test_peak_table():
    assert speed.peak_tflops("NVIDIA H100 80GB HBM3")["bf16"] == 989.0
    assert speed.peak_tflops("NVIDIA H100 PCIe")["bf16"] == 756.0
    assert speed.peak_tflops("NVIDIA H200")["fp32"] == 67.0
    assert speed.peak_tflops("NVIDIA A100-SXM4-80GB")["bf16"] == 312.0
    assert speed.peak_tflops("Some CPU") is None


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


class _Split(torch.utils.data.Dataset):
    def __init__(self, n: int = 5):
        g = torch.Generator().manual_seed(0)
        self.images = [torch.rand(3, 40 + 8 * i, 56, generator=g) * 255 for i in range(n)]
        self.labels = [torch.randint(0, 19, (40 + 8 * i, 56), generator=g) for i in range(n)]
        self.names = [f"img{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "name": self.names[i]}


def _toy_predict(images: torch.Tensor) -> torch.Tensor:
    weight = torch.linspace(-1, 1, 19 * 3).view(19, 3, 1, 1) / 255
    return F.conv2d(images, weight)


def test_evaluate_split_prefetch_workers_give_identical_confusions(tmp_path):
    spec = InferenceSpec(mode="slide", crop_size=(32, 32), stride=(21, 21))
    a = evaluate_split(_toy_predict, _Split(), spec, key="a", out_dir=tmp_path, progress=False)
    b = evaluate_split(_toy_predict, _Split(), spec, key="b", out_dir=tmp_path, progress=False, num_workers=1,
                       batch_windows=4)
    assert a.num_images == b.num_images == 5
    assert (a.confusion == b.confusion).all() and a.confusion.sum() > 0


def test_famix_is_benchmarked_with_a_synthetic_style_bank(tmp_path, capsys):
    """FAMix trains with style mixing from a mined bank; the speed benchmark stands in a synthetic bank of
    the same shape (same sampling and mixing cost) instead of crashing for want of one."""
    out = tmp_path / "speed.json"
    rc = speed.main(["--method", "famix", "--scale", "miniature", "--device", "cpu", "--batch-size", "2",
                     "--res", "64", "--eval-res", "64", "--eval-batch", "1", "--steps", "1", "--warmup", "1",
                     "--json", str(out)])
    assert rc == 0
    train = json.loads(out.read_text())["train"]
    assert all(train[m]["img_per_s"] > 0 for m in train)
    spec = speed.resolve_method("famix", scale="miniature")
    method = spec.build(torch.device("cpu"))
    assert method.style_bank is not None and method.style_bank.meta == {"synthetic": True}
    assert method.style_bank.channels == spec.config.resnet.channels[0]
