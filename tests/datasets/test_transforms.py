"""Train/test transforms: mmcv resize rule, RandomCrop cat_max_ratio, flip, determinism, labels."""

import numpy as np
import pytest
import torch

from datasets.transforms import (
    TestTransform,
    TrainAugmentation,
    TrainTransform,
    photometric_distortion,
    random_crop_box,
    rescale_size,
    shortest_edge_size,
)


@pytest.mark.parametrize("w,h,scale,expected", [
    (2048, 1024, (1024, 512), (1024, 512)),
    (1280, 720, (1024, 512), (910, 512)),
    (4032, 3024, (2048, 1024), (1365, 1024)),
    (1280, 720, (1280, 720), (1280, 720)),
    (1280, 720, (2048, 1024), (1820, 1024)),
    (2016, 1512, (1024, 512), (683, 512)),
    (1914, 1052, (512, 1024), (932, 512)),   # (long, short) given in either order
    (768, 1024, (1024, 512), (512, 683)),    # portrait
])
def test_rescale_size_matches_mmcv(w, h, scale, expected):
    assert rescale_size(w, h, scale) == expected


def test_shortest_edge_size():
    assert shortest_edge_size(1914, 1052, 512, 2048) == (932, 512)
    assert shortest_edge_size(4000, 1000, 1024, 2048) == (2048, 512)  # long edge capped
    assert shortest_edge_size(1052, 1914, 512, 2048) == (512, 932)


def make_sample(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), np.uint8)
    label[:, w // 2:] = 5
    label[: h // 4] = 255
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return {"image": image, "label": label, "name": "x", "dataset": "d"}


def test_train_transform_types_and_padding():
    aug = TrainAugmentation(crop_size=(64, 80), rescale="none", photometric=False, hflip_prob=0.0)
    out = TrainTransform(aug)(make_sample(), np.random.default_rng(0))
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 80)  # compact across workers
    assert out["label"].dtype == torch.uint8 and out["label"].shape == (64, 80)
    assert out["name"] == "x" and out["dataset"] == "d" and out["valid_size"] == (40, 60)
    assert torch.all(out["label"][40:] == 255) and torch.all(out["label"][:, 60:] == 255)
    s = make_sample()
    assert torch.equal(out["image"][:, :40, :60], torch.from_numpy(s["image"]).permute(2, 0, 1))


def test_flip_flips_image_and_label_together():
    s = make_sample()
    aug = TrainAugmentation(crop_size=(40, 60), rescale="none", photometric=False, hflip_prob=1.0, cat_max_ratio=1.0)
    out = TrainTransform(aug)(s, np.random.default_rng(0))
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), s["image"][:, ::-1])
    np.testing.assert_array_equal(out["label"].numpy(), s["label"][:, ::-1])


def test_determinism_and_seed_dependence():
    tf = TrainTransform(TrainAugmentation(crop_size=(24, 24)))
    s = make_sample()
    a = tf(s, np.random.default_rng(7))
    b = tf(s, np.random.default_rng(7))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    others = [tf(s, np.random.default_rng(k)) for k in range(8)]
    assert any(not torch.equal(o["image"], a["image"]) for o in others)


@pytest.mark.parametrize("aug", [
    TrainAugmentation(crop_size=(32, 32), ratio_range=(0.3, 2.7)),
    TrainAugmentation(crop_size=(32, 32), rescale="short_edge_choices", short_edge_choices=(17, 55, 90)),
    TrainAugmentation(crop_size=(32, 32), rescale="fixed", fixed_size=(77, 43)),
    TrainAugmentation(crop_size=(32, 32), rescale="ratio_range", base_size=(100, 50), ratio_range=(0.5, 2.0)),
])
def test_labels_never_interpolated(aug):
    s = make_sample()
    tf = TrainTransform(aug)
    for k in range(10):
        out = tf(s, np.random.default_rng(k))
        assert set(torch.unique(out["label"]).tolist()) <= {0, 5, 255}


def test_rescale_modes_target_sizes():
    rng = np.random.default_rng(0)
    assert TrainTransform(TrainAugmentation(rescale="fixed", fixed_size=(1280, 720))).target_size(1914, 1052, rng) == (1280, 720)
    assert TrainTransform(TrainAugmentation(rescale="none")).target_size(1914, 1052, rng) == (1914, 1052)
    sec = TrainTransform(TrainAugmentation(rescale="short_edge_choices", short_edge_choices=(512,), max_long_edge=2048))
    assert sec.target_size(1914, 1052, rng) == (932, 512)
    rr = TrainTransform(TrainAugmentation(rescale="ratio_range", ratio_range=(1.0, 1.0), base_size=(2048, 512)))
    assert rr.target_size(1914, 1052, rng) == rescale_size(1914, 1052, (2048, 512))
    for _ in range(20):
        w, h = TrainTransform(TrainAugmentation(ratio_range=(0.5, 2.0))).target_size(200, 100, rng)
        assert 100 <= w <= 400 and abs(w / h - 2.0) < 0.05


def test_augmentation_validation():
    with pytest.raises(ValueError):
        TrainAugmentation(rescale="bogus")
    with pytest.raises(ValueError):
        TrainAugmentation(rescale="short_edge_choices")
    with pytest.raises(ValueError):
        TrainAugmentation(rescale="fixed")


class CountingRng:
    """Wraps a Generator and counts ``integers`` calls (2 per crop draw)."""

    def __init__(self, seed=0):
        self.g, self.calls = np.random.default_rng(seed), 0

    def integers(self, *a, **k):
        self.calls += 1
        return self.g.integers(*a, **k)


def test_cat_max_ratio_retries_and_ignores_255():
    # whole-image crop: class 0 = 200 px, class 1 = 20 px, ignore = 180 px -> 0.91 > 0.75 -> 10 redraws
    label = np.full((20, 20), 255, np.uint8)
    label[:, :10] = 0
    label[:, 19] = 1
    rng = CountingRng()
    assert random_crop_box(label, (20, 20), 0.75, rng) == (0, 20, 0, 20)
    assert rng.calls == 22  # the ignore pixels must not count (else 200/400 < 0.75 and no retry)
    label[:, 10:19] = 1  # now 200 vs 200 -> accepted at once
    rng = CountingRng()
    random_crop_box(label, (20, 20), 0.75, rng)
    assert rng.calls == 2
    rng = CountingRng()
    random_crop_box(np.zeros((20, 20), np.uint8), (8, 8), 1.0, rng)
    assert rng.calls == 2  # cat_max_ratio 1 disables the retries


def test_cat_max_ratio_improves_crops():
    label = np.zeros((100, 100), np.uint8)
    label[:, 60:] = 1  # most 30x30 crops are a single class

    def ok(box):
        y0, y1, x0, x1 = box
        c = np.bincount(label[y0:y1, x0:x1].ravel(), minlength=2)
        return (c > 0).sum() > 1 and c.max() / c.sum() < 0.75

    with_ratio = np.mean([ok(random_crop_box(label, (30, 30), 0.75, np.random.default_rng(s))) for s in range(200)])
    without = np.mean([ok(random_crop_box(label, (30, 30), 1.0, np.random.default_rng(s))) for s in range(200)])
    assert without < 0.35 and with_ratio > 0.75  # ~0.21 per draw; 1 - 0.79**11 = 0.93 with retries


def test_photometric_distortion():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    outs = [photometric_distortion(img, np.random.default_rng(s)) for s in range(6)]
    assert all(o.dtype == np.uint8 and o.shape == img.shape for o in outs)
    assert any(not np.array_equal(o, img) for o in outs)
    np.testing.assert_array_equal(photometric_distortion(img, np.random.default_rng(3)), outs[3])


def test_test_transform_keeps_native_label():
    s = {"image": np.zeros((1024, 2048, 3), np.uint8), "label": np.ones((1024, 2048), np.uint8), "name": "n",
         "dataset": "cityscapes"}
    out = TestTransform((1024, 512))(s)
    assert out["image"].shape == (3, 512, 1024) and out["image"].dtype == torch.uint8
    assert out["label"].shape == (1024, 2048) and out["label"].dtype == torch.uint8
    assert out["ori_size"] == (1024, 2048) and out["dataset"] == "cityscapes"
    native = TestTransform(None)(s)
    assert native["image"].shape == (3, 1024, 2048)
    bdd = {"image": np.zeros((720, 1280, 3), np.uint8), "label": np.zeros((720, 1280), np.uint8)}
    assert TestTransform((1024, 512))(bdd)["image"].shape == (3, 512, 910)
