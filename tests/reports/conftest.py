"""Fixture result records for the reports tests: fake runs written like runners.run writes them."""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.metrics import score_confusion
from benchmarks.protocols import Protocol, get_protocol
from datasets.labels import CITYSCAPES_CLASSES

# method, backbone, base quality (share of correctly classified pixels), trainable params, GPU-hours per run
FIXTURE_METHODS = [
    ("rein", "dinov2_vitl14", 0.80, 2_990_000, 9.0),
    ("tqdm", "eva02_clip_vitl14", 0.84, 310_000_000, 14.0),
    ("frozen_m2f", "dinov2_vitl14", 0.72, 20_000_000, 6.0),
]


def flipped_protocol(name: str = "gta2cbm", *, miniature: bool = False) -> Protocol:
    """A protocol whose only difference to the default is test-time flipping (a different hash)."""
    p = get_protocol(name, miniature=miniature)
    return dataclasses.replace(p, variant="flip", inference=dataclasses.replace(p.inference, flip=True))


def _confusions(rng: np.random.Generator, n_images: int, quality: float, num_classes: int = 19) -> np.ndarray:
    """Per-image confusions: each GT class keeps ``quality`` (class-dependent) of its pixels on the diagonal."""
    cms = np.zeros((n_images, num_classes, num_classes), dtype=np.int64)
    class_q = np.clip(quality + rng.normal(0, 0.12, num_classes), 0.05, 0.99)
    for i in range(n_images):
        present = rng.random(num_classes) < 0.7
        present[0] = True
        for c in np.flatnonzero(present):
            pixels = int(rng.integers(200, 2000))
            q = np.clip(class_q[c] + rng.normal(0, 0.05), 0.0, 1.0)
            correct = int(pixels * q)
            wrong = rng.multinomial(pixels - correct, np.ones(num_classes) / num_classes)
            cms[i, c] += wrong
            cms[i, c, c] += correct
    return cms


def write_fake_run(root: Path, method: str, backbone: str, *, seed: int = 0, quality: float = 0.7,
                   protocol: Protocol | None = None, benchmark: str = "real", trainable: int = 1_000_000,
                   n_images: int = 10, device: str = "cuda", created: str = "2026-11-23T15:00:00+00:00",
                   iterations: int = 100, run_suffix: str = "", hours: float = 1.0,
                   artifacts: bool = False) -> Path:
    """Write ``<root>/<run_id>/result.json`` and its ``eval/confusion_<split>.npz`` files; returns the record path.
    ``artifacts``: also the gallery predictions (:func:`write_fake_gallery`) and a ``train_log.jsonl``."""
    miniature = benchmark == "miniature"
    protocol = protocol or get_protocol("gta2cbm", miniature=miniature)
    phash = protocol.content_hash()
    run_id = f"{method}-{backbone}-{protocol.name}{'-mini' if miniature else ''}-s{seed}-{phash[:4]}{run_suffix}"
    folder = root / run_id
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(f"{method}|{backbone}|{seed}|{protocol.variant}|{run_suffix}".encode()))
    targets: dict[str, Any] = {}
    splits = list(protocol.targets) + [protocol.reference]
    scores = {}
    for k, split in enumerate(splits):
        is_ref = split.key == protocol.reference.key and k == len(splits) - 1
        q = min(0.97, quality + 0.12) if is_ref else quality - 0.04 * k
        cms = _confusions(rng, n_images, q)
        names = np.asarray([f"{split.key}_{i:04d}" for i in range(n_images)], dtype=str)
        rel = f"eval/confusion_{split.key}.npz"
        np.savez(folder / rel, names=names, confusion=cms)
        s = score_confusion(cms.sum(0), num_images=n_images)
        scores[split.key] = {"miou": s.miou, "acc": s.acc, "num_images": n_images,
                             "per_class_iou": dict(zip(CITYSCAPES_CLASSES, s.per_class_iou)),
                             "confusion": rel, "seconds": 1.0}
        if not is_ref:
            targets[split.key] = scores[split.key]
    ref = scores[protocol.reference.key]
    mean = float(np.mean([t["miou"] for t in targets.values()]))
    total_s = 3600.0 * hours * (1 + 0.1 * seed)
    record = {
        "schema": 1, "run_id": run_id, "created": created, "method": method, "backbone": backbone,
        "protocol": protocol.name, "eval_variant": protocol.variant, "protocol_hash": phash,
        "miniature": miniature, "benchmark": benchmark, "seed": seed, "pretrained": not miniature, "weights": {},
        "spec": {"method": method, "backbone": backbone, "scale": "miniature" if miniature else "paper", "seed": seed,
                 "model": {"backbone": backbone}, "recipe": {"iterations": iterations, "log_interval": 10},
                 "protocol": protocol.to_dict(), "protocol_hash": phash},
        "spec_hash": "0" * 16,
        "params": {"total": trainable * 3, "trainable": trainable, "per_module": {}},
        "environment": {"python": "3.11", "packages": {}, "git": {"commit": "abc123", "dirty": False},
                        "device": device, **({"gpu": "NVIDIA H100", "gpu_count": 1} if device == "cuda" else {})},
        "train": {"iterations": iterations, "seconds": total_s - 60},
        "results": {"targets": targets, "mean_miou": mean, "reference": {"key": protocol.reference.key, **ref},
                    "rpd": {k: 100 * v["miou"] / ref["miou"] for k, v in targets.items()},
                    "mean_rpd": 100 * mean / ref["miou"], "rpd_definition": "rPD = 100 * target / source"},
        "timings": {"total_s": total_s, "eval_s": 60.0, "train_s": total_s - 60},
    }
    if artifacts:
        for key in targets:
            targets[key]["gallery"] = write_fake_gallery(folder, key, shift=round(20 * (1 - quality)))
        log = [{"iteration": it, "loss": 3.0 / it ** 0.5, "loss_ce": 1.0 / it ** 0.5, "loss_dice": 2.0 / it ** 0.5,
                "lr": 1e-4 * (1 - it / (iterations + 1)), "lr_groups": [1e-4 * (1 - it / (iterations + 1)),
                                                                    1e-5 * (1 - it / (iterations + 1))],
                "time": 0.5 * it, "it_per_s": 2.0, "grad_norm": 0.5 + 1.0 / it} for it in range(1, iterations + 1, 10)]
        (folder / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    (folder / "result.json").write_text(json.dumps(record, indent=1))
    return folder / "result.json"


GALLERY_SHAPE = (48, 96)  # (h, w) of the fake gallery images


def write_fake_gallery(folder: Path, key: str, *, shift: int, n: int = 2) -> dict[str, Any]:
    """Gallery files of target ``key`` as runners.run saves them: ground truth sky (10) over road (0) at the
    horizon row 24 with a car (13) block; the prediction moves the horizon down by ``shift`` rows."""
    import torch

    from benchmarks.predictions import save_gallery_item

    names = [f"{key}_{i:04d}" for i in range(n)]
    h, w = GALLERY_SHAPE
    for name in names:
        gt = torch.zeros(h, w, dtype=torch.long)
        gt[:24] = 10
        gt[30:40, 10:30] = 13
        pred = torch.zeros(h, w, dtype=torch.long)
        pred[:24 + shift] = 10
        image = torch.linspace(0, 255, w).expand(3, h, w).clone()
        save_gallery_item(folder / "predictions" / key, name, image, gt, pred)
    return {"dir": f"predictions/{key}", "images": names}


def write_fixture_set(root: Path, *, seeds=(0, 1), with_flip: bool = True, with_miniature: bool = True,
                      artifacts: bool = False) -> list[Path]:
    """A small set: 3 methods x seeds on real gta2cbm, one flipped-protocol run, one city2bm run, miniature runs."""
    paths = []
    for method, backbone, q, trainable, hours in FIXTURE_METHODS:
        for seed in seeds:
            paths.append(write_fake_run(root / "real", method, backbone, seed=seed, quality=q + 0.01 * seed,
                                        trainable=trainable, hours=hours, artifacts=artifacts))
    paths.append(write_fake_run(root / "real", "rein", "dinov2_vitl14", seed=0, quality=0.82, trainable=2_990_000,
                                protocol=get_protocol("city2bm")))
    if with_flip:
        paths.append(write_fake_run(root / "flip", "rein", "dinov2_vitl14", seed=0, quality=0.81,
                                    trainable=2_990_000, protocol=flipped_protocol()))
    if with_miniature:
        for method, backbone, q, trainable, _ in FIXTURE_METHODS[:2]:
            paths.append(write_fake_run(root / "mini", method, backbone, seed=0, quality=q - 0.3,
                                        benchmark="miniature", device="cpu", trainable=trainable // 1000))
    return paths


@pytest.fixture
def fixture_runs(tmp_path: Path) -> Path:
    """tmp_path/runs holding the fixture result records."""
    root = tmp_path / "runs"
    write_fixture_set(root)
    return root


@pytest.fixture
def artifact_runs(tmp_path: Path) -> Path:
    """tmp_path/runs: one seed of the fixture methods on real gta2cbm and city2bm, with gallery predictions
    and training logs (what reports.run and reports.gallery read)."""
    root = tmp_path / "runs"
    write_fixture_set(root, seeds=(0,), with_flip=False, with_miniature=False, artifacts=True)
    return root


@pytest.fixture
def fixture_csv(tmp_path: Path, fixture_runs: Path) -> Path:
    """leaderboard.csv aggregated from the fixture records (200 bootstrap resamples, to stay fast)."""
    from reports.aggregate import AggregateOptions, merge_into_csv, write_leaderboard
    from runners.records import load_records

    csv_path = tmp_path / "leaderboard.csv"
    write_leaderboard(csv_path, merge_into_csv(csv_path, load_records(fixture_runs), AggregateOptions(resamples=200)))
    return csv_path


@pytest.fixture
def write_run():
    """:func:`write_fake_run`, as a fixture (test modules never import conftest by name)."""
    return write_fake_run
