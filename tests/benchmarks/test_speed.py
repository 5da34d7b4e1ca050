"""benchmarks.speed as a library on a CPU: FLOP counting, peaks, the modes' numerics (benchmarks.numerics), data
loading against the plain baseline, scoring at native resolution, protocol geometry, prefetching in evaluation.
The command and the model-level suites are tested in tests/runners/test_speed.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks import speed
from benchmarks.evaluate import evaluate_split
from benchmarks.protocols import InferenceSpec, get_protocol


pytestmark = pytest.mark.usefixtures("one_thread")


def test_flop_counter_counts_cpu_sdpa_forward_and_backward():
    b, h, n, d = 2, 3, 40, 16
    q = torch.randn(b, h, n, d, requires_grad=True)
    res = speed.count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    fwd = 2 * (2 * b * h * n * n * d)  # QK^T and PV
    assert sum(res["attention_flops"].values()) == fwd + 2.5 * fwd  # backward: 5 matmuls of the same size
    assert res["calls"]


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


def test_modes_use_the_numerics_function_and_restore_the_flags():
    from benchmarks.numerics import resolve_numerics
    from benchmarks.speed.timing import precision

    cuda = torch.device("cuda")  # flags only; no GPU needed
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    opt, base = speed.optimized_mode(cuda, precision="tf32"), speed.baseline_mode(cuda)
    assert opt.numerics == resolve_numerics("tf32", cuda) and base.numerics == resolve_numerics("fp32", cuda)
    with precision(opt, cuda):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
    with precision(base, cuda):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark) == before
    assert speed.optimized_mode(cuda).amp_dtype == torch.bfloat16
    assert speed.optimized_mode(torch.device("cpu")).amp_dtype is None


def test_loading_ours_equals_the_plain_cv2_baseline(tmp_path):
    """Every recipe shape (rescale modes, cat_max_ratio, flip, photometric, colour jitter, padding) and a test
    resize give the same tensors as the plain baseline; the table ends with the worst ratio."""
    from benchmarks.speed.data import eval_cases, train_cases, write_bdd_like
    from benchmarks.speed.report import loading_table
    from datasets.transforms import TrainAugmentation

    gta = speed.write_gta_like(tmp_path / "gta", 2, (90, 150))
    bdd = write_bdd_like(tmp_path / "bdd", 2, (72, 128))
    recipes = {
        "ratio": (TrainAugmentation(crop_size=(64, 64), ratio_range=(0.5, 2.0)), ""),
        "short": (TrainAugmentation(crop_size=(128, 128), rescale="short_edge_choices",
                                    short_edge_choices=(64, 96)), ""),
        "fixed": (TrainAugmentation(crop_size=(48, 200), rescale="fixed", fixed_size=(160, 90),
                                    hflip_prob=1.0), ""),
        "jitter": (TrainAugmentation(crop_size=(96, 96), rescale="none", photometric=False,
                                     color_jitter=(0.8, 0.8, 0.8)), ""),
    }
    cases = train_cases({"tiny": gta}, recipes) + eval_cases({"tiny": {"bdd100k": bdd}},
                                                             get_protocol("gta2cbm", variant="vltseg"))
    rows = speed.bench_loading(cases, reps=1, max_images=2, min_samples=1)
    assert len(rows) == 5 and all(r["identical"] for r in rows), [(r["case"], r["identical"]) for r in rows]
    assert rows[2]["out_shape"] == (3, 48, 200)
    assert rows[-1]["out_shape"] == (3, 512, 910)  # vltseg: keep-ratio fit into 1024x512
    assert all(r["ratio"] > 0 for r in rows)
    last = loading_table(rows).splitlines()[-1]
    assert last == f"worst ratio vs baseline: {max(r['ratio'] for r in rows):.3f}"


def test_plain_baseline_sees_a_broken_pipeline(tmp_path):
    """The identity check is real: a transform that differs (no flip) is reported."""
    from benchmarks.speed.data import LoadCase, plain_train_sample
    from datasets import build_dataset
    from datasets.transforms import TrainAugmentation, TrainTransform

    gta = speed.write_gta_like(tmp_path / "gta", 1, (64, 96))
    aug = TrainAugmentation(crop_size=(64, 64), rescale="none", hflip_prob=1.0, photometric=False)
    ds = build_dataset("gta5", "all", gta, transform=TrainTransform(TrainAugmentation(
        crop_size=(64, 64), rescale="none", hflip_prob=0.0, photometric=False)))
    case = LoadCase("mismatch", ds, lambda i, rng: plain_train_sample(ds, i, aug, rng))
    assert not speed.bench_loading([case], reps=1, max_images=1, min_samples=1)[0]["identical"]


def test_scoring_rows_identical_labels_and_full_tensor_size():
    rows = speed.bench_scoring({"tiny": ((20, 30), (61, 90))}, device=torch.device("cpu"), reps=1, memory=False)
    assert rows[0]["identical"] and rows[0]["full_tensor_gib"] == 19 * 61 * 90 * 4 / 2**30
    assert rows[0]["full_ms"] > 0 and rows[0]["tiled_ms"] > 0


def test_benchmarks_speed_entry_names_the_command():
    from benchmarks.speed.cli import main

    assert main(["--data"], models=None) == 2
