"""uint8 batches across workers, conversion on the device, and mmseg's padding: normalise first, then pad the
image with 0 and the label with 255 (checked against a hand computation)."""

import numpy as np
import torch

from datasets.batching import batch_to_device, collate, fill_padding
from datasets.transforms import TrainAugmentation, TrainTransform

MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # ImageNet, as a method would normalise
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def sample(h, w, seed):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "label": rng.integers(0, 19, (h, w), dtype=np.uint8), "name": f"s{seed}"}


def test_small_crops_are_normalised_then_padded_with_zero_and_ignore():
    crop = (8, 10)
    aug = TrainAugmentation(crop_size=crop, rescale="none", photometric=False, hflip_prob=0.0, cat_max_ratio=1.0)
    raw = [sample(5, 7, 0), sample(8, 4, 1), sample(8, 10, 2)]  # short, narrow, exact fit
    items = [TrainTransform(aug)(s, np.random.default_rng(0)) for s in raw]
    batch = collate(items)
    assert batch["image"].dtype == torch.uint8 and batch["label"].dtype == torch.uint8
    assert batch["valid_size"].tolist() == [[5, 7], [8, 4], [8, 10]]

    mean, std = torch.from_numpy(MEAN), torch.from_numpy(STD)
    images, labels = batch_to_device(batch, torch.device("cpu"), pad_color=mean)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    normalised = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)  # what Method.normalize does

    for b, s in enumerate(raw):  # by hand: normalise the valid pixels, then pad with 0 / 255 (mmseg)
        h, w = s["label"].shape
        expected = np.zeros((3, *crop), np.float32)
        expected[:, :h, :w] = ((s["image"].astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)
        expected_label = np.full(crop, 255, np.int64)
        expected_label[:h, :w] = s["label"]
        np.testing.assert_array_equal(normalised[b].numpy(), expected)  # padding exactly 0, not -mean/std
        np.testing.assert_array_equal(labels[b].numpy(), expected_label)


def test_method_pad_color_normalises_to_exact_zero():
    from methods.registry import get_method_class

    cls = get_method_class("frozen_m2f")
    method = cls(cls.default_config(scale="miniature"))
    images = torch.full((1, 3, 4, 6), 7.0)
    fill_padding(images, [(2, 3)], method.pad_color)
    out = method.normalize(images)
    assert torch.all(out[0, :, 2:] == 0) and torch.all(out[0, :, :, 3:] == 0)
    assert torch.all(out[0, :, :2, :3] != 0)


def test_collate_without_valid_size_and_float_images_still_works():
    batch = collate([{"image": torch.rand(3, 4, 4) * 255, "label": torch.zeros(4, 4, dtype=torch.long), "name": "a"}])
    assert "valid_size" not in batch
    images, labels = batch_to_device(batch, torch.device("cpu"), pad_color=torch.zeros(3))
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
