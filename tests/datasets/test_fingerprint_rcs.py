"""Dataset fingerprints (stable, cached, sensitive to one label byte) and rare-class sampling (RCS)."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datasets import ConcatSegmentationDataset, TrainAugmentation, TrainTransform, build_dataset
from datasets.fingerprint import LabelDigestCache, dataset_fingerprints, split_fingerprint
from datasets.labels import CITYSCAPES_PALETTE
from datasets.sampling import (
    RareClassCropDataset,
    RareClassSampler,
    RareClassSampling,
    RareClassStats,
    class_pixel_counts,
    sample_seed,
)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DGSS_CACHE_DIR", str(cache))
    return cache


def make_gta(root: Path, labels: list[np.ndarray]) -> Path:
    (root / "gta/images").mkdir(parents=True)
    (root / "gta/labels").mkdir(parents=True)
    for i, ids in enumerate(labels, 1):
        h, w = ids.shape
        cv2.imwrite(str(root / f"gta/images/{i:05d}.png"), np.full((h, w, 3), 10 * i, np.uint8))
        im = Image.frombytes("P", (w, h), np.ascontiguousarray(ids, np.uint8).tobytes())
        im.putpalette(CITYSCAPES_PALETTE.ravel().tolist())
        im.save(root / f"gta/labels/{i:05d}.png")
    return root


def rare_layout(n: int = 6, h: int = 32, w: int = 32) -> list[np.ndarray]:
    """Road (labelId 7) everywhere; image 3 also holds a 6x6 patch of car (26): the rare class."""
    out = []
    for i in range(n):
        ids = np.full((h, w), 7, np.uint8)
        ids[:4] = 23  # sky in every image
        if i == 2:
            ids[20:26, 3:9] = 26
        out.append(ids)
    return out


# ---------------------------------------------------------------------------------------------- fingerprints
def test_fingerprint_stable_relocatable_and_sensitive_to_one_label_byte(tmp_path, cache_dir):
    root = make_gta(tmp_path / "a", rare_layout())
    fp = split_fingerprint("gta5", "all", root)
    assert len(fp) == 16 and fp == split_fingerprint("gta5", "all", root)
    moved = tmp_path / "b"
    shutil.copytree(root, moved)
    assert split_fingerprint("gta5", "all", moved) == fp  # names + label bytes, not absolute paths
    # image bytes do not count ...
    cv2.imwrite(str(moved / "gta/images/00001.png"), np.zeros((32, 32, 3), np.uint8))
    assert split_fingerprint("gta5", "all", moved) == fp
    # ... one label byte does
    lab = moved / "gta/labels/00004.png"
    data = bytearray(lab.read_bytes())
    data[-20] ^= 0x01  # inside the IEND/IDAT tail: a different file of the same size
    lab.write_bytes(bytes(data))
    assert split_fingerprint("gta5", "all", moved) != fp
    # and so does the file list
    other = make_gta(tmp_path / "c", rare_layout(n=5))
    assert split_fingerprint("gta5", "all", other) != fp


def test_label_digests_are_cached_by_path_size_mtime(tmp_path, cache_dir):
    root = make_gta(tmp_path, rare_layout())
    first = LabelDigestCache()
    pairs = build_dataset("gta5", "all", root).pairs
    first.digests([p.label for p in pairs])
    assert first.hashed == 6
    first.save()
    assert (cache_dir / "fingerprints" / "label_sha256.json").is_file()
    second = LabelDigestCache()
    second.digests([p.label for p in pairs])
    assert second.hashed == 0  # served from the cache: no re-reading of 25k GTA labels
    (root / "gta/labels/00002.png").write_bytes((root / "gta/labels/00003.png").read_bytes())
    third = LabelDigestCache()
    third.digests([p.label for p in pairs])
    assert third.hashed == 1


def test_dataset_fingerprints_keys(tmp_path):
    root = make_gta(tmp_path, rare_layout())
    (root / "gta/gtav_split_val.txt").write_text("00002.png\n00005.png\n")
    fps = dataset_fingerprints([("gta5", "all"), ("gta5", "val"), ("gta5", "all")], root)
    assert list(fps) == ["gta5/all", "gta5/val"] and fps["gta5/all"] != fps["gta5/val"]


# ---------------------------------------------------------------------------------------------- RCS
def gta_train_set(root: Path, crop=(12, 12)):
    aug = TrainAugmentation(crop_size=crop, rescale="none", cat_max_ratio=1.0, photometric=False)
    return build_dataset("gta5", "all", root, transform=TrainTransform(aug))


def test_class_counts_frequencies_and_probabilities(tmp_path, cache_dir):
    root = make_gta(tmp_path, rare_layout())
    ds = gta_train_set(root)
    counts = class_pixel_counts(ds)
    assert counts.shape == (6, 19)
    assert counts[:, 10].tolist() == [128] * 6 and counts[2, 13] == 36 and counts[:, 13].sum() == 36
    # cached on disk (keyed by the fingerprint): a second call decodes nothing
    ds.decode_label = lambda path: (_ for _ in ()).throw(AssertionError("decoded again"))
    assert np.array_equal(class_pixel_counts(ds), counts)
    assert len(list((cache_dir / "class_stats").glob("*.npy"))) == 1

    cfg = RareClassSampling(class_temp=0.01, min_pixels=30, min_crop_ratio=0.5)
    stats = RareClassStats.from_counts(counts, cfg)
    assert stats.classes.tolist() == [0, 10, 13]  # road, sky, car: every class some image holds >= 30 px of
    f = counts.sum(0) / counts.sum()
    logits = (1 - f[[0, 10, 13]]) / 0.01
    np.testing.assert_allclose(stats.probabilities, np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    assert stats.probabilities[2] > 0.9  # a low temperature favours the rare class
    assert stats.candidates[2].tolist() == [2]
    uniform = RareClassStats.from_counts(counts, RareClassSampling(class_temp=100.0, min_pixels=30))
    np.testing.assert_allclose(uniform.probabilities, 1 / 3, atol=0.01)  # tqdm's T=100: nearly uniform
    with pytest.raises(ValueError, match="min_pixels"):
        RareClassStats.from_counts(counts, RareClassSampling(min_pixels=10_000))
    with pytest.raises(ValueError, match="unknown keys"):
        RareClassSampling.from_dict({"temp": 1})
    assert RareClassSampling.from_dict({"temperature": 2.0}).class_temp == 2.0


def test_sampler_is_a_pure_function_of_seed_and_sample_index(tmp_path):
    counts = class_pixel_counts(gta_train_set(make_gta(tmp_path, rare_layout())))
    stats = RareClassStats.from_counts(counts, RareClassSampling(class_temp=0.05, min_pixels=30))
    full = list(RareClassSampler(stats, 6, 2, 10, seed=3))
    assert len(full) == 20 and full == list(RareClassSampler(stats, 6, 2, 10, seed=3))
    assert full != list(RareClassSampler(stats, 6, 2, 10, seed=4))
    # resume at iteration 4: exactly the tail of the uninterrupted stream
    assert list(RareClassSampler(stats, 6, 2, 10, seed=3, start_iter=4)) == full[8:]
    # DDP: two ranks with batch 1 each slice the same global stream
    r0 = list(RareClassSampler(stats, 6, 1, 10, seed=3, rank=0, world_size=2))
    r1 = list(RareClassSampler(stats, 6, 1, 10, seed=3, rank=1, world_size=2))
    assert [x for pair in zip(r0, r1) for x in pair] == full
    # the augmentation seed is DeterministicSampler's for the same global index
    assert [x[1] for x in full[:3]] == [sample_seed(3, g) for g in range(3)]
    for idx, _, cls in full:
        assert counts[idx, cls] >= 30  # the image holds the drawn class
    assert {cls for _, _, cls in full} >= {13}


def test_crop_is_retried_until_the_class_covers_enough_pixels(tmp_path):
    root = make_gta(tmp_path, rare_layout())
    cfg = RareClassSampling(class_temp=0.01, min_pixels=30, min_crop_ratio=0.5)
    ds = RareClassCropDataset(gta_train_set(root), cfg)
    plain = gta_train_set(root)
    hits_plain = hits_rcs = 0
    for seed in range(40):
        sample = ds[(2, seed, 13)]
        assert sample["image"].shape == (3, 12, 12) and sample["name"] == "00003"
        hits_rcs += int((sample["label"] == 13).sum() >= 15)
        hits_plain += int((plain[(2, seed)]["label"] == 13).sum() >= 15)
        if seed < 3:  # deterministic
            assert torch.equal(sample["label"], ds[(2, seed, 13)]["label"])
    assert hits_rcs > 3 * hits_plain and hits_rcs >= 25  # ~1 - (1 - 7/40)^10 of the draws
    assert torch.equal(ds[(1, 5)]["image"], plain[(1, 5)]["image"])  # 2-tuples pass through


def test_concat_dataset_for_several_sources(tmp_path):
    a = gta_train_set(make_gta(tmp_path / "a", rare_layout(n=3)))
    b = gta_train_set(make_gta(tmp_path / "b", rare_layout(n=4)))
    both = ConcatSegmentationDataset([a, b])
    assert len(both) == 7 and both.name == "gta5+gta5" and len(both.pairs) == 7
    assert torch.equal(both[(4, 9)]["image"], b[(1, 9)]["image"])
    assert both.load(6)["name"] == "00004" and both.transform is a.transform
    with pytest.raises(IndexError):
        both[(7, 0)]
    counts = class_pixel_counts(both)
    assert counts.shape == (7, 19) and counts[2, 13] == 36 and counts[5, 13] == 36
