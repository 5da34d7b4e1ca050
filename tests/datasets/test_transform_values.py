"""Transform values pinned against hand computations and a scripted random stream.

``ScriptedRng`` stands in for the ``np.random.Generator``: every draw must be the next one written out here
(method and arguments: the ranges and probabilities of the mmseg / torchvision pipelines) and returns the value
written out next to it, so the expected images and labels can be computed by hand or with the library call
the papers' code makes (cv2 colour conversion, torchvision's ``adjust_*`` on PIL images).
"""

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from datasets.transforms import (
    HeightCenterCrop,
    TestTransform,
    TrainAugmentation,
    TrainTransform,
    color_jitter,
    height_center_crop,
    photometric_distortion,
    prehalve,
    random_crop_box,
    rescale_size,
    shortest_edge_size,
)


class ScriptedRng:
    """Each call must be the next scripted ``(method, args, value)``; returns ``value``."""

    def __init__(self, *script):
        self.script = list(script)

    def _draw(self, method, args):
        assert self.script, f"unexpected draw {method}{args}"
        want_method, want_args, value = self.script.pop(0)
        assert (method, args) == (want_method, want_args), f"drew {method}{args}, expected {want_method}{want_args}"
        return value

    def integers(self, *args):
        return self._draw("integers", args)

    def uniform(self, *args):
        return self._draw("uniform", args)

    def random(self, *args):
        return self._draw("random", args)

    def permutation(self, *args):
        return self._draw("permutation", args)

    def done(self):
        return not self.script


def coin(value):
    return ("integers", (2,), value)


# ---------------------------------------------------------------------------------------------- photometric
PIXELS = np.array([[[250, 10, 128], [0, 255, 64], [200, 100, 102]]], np.uint8)  # 1 x 3 RGB


def test_photometric_brightness_then_contrast_by_hand():
    rng = ScriptedRng(coin(1), ("uniform", (-32, 32), 20.0),     # brightness +20
                      coin(1), coin(1), ("uniform", (0.5, 1.5), 1.5),  # contrast first, x1.5
                      coin(0), coin(0))                           # no saturation, no hue
    out = photometric_distortion(PIXELS, rng)
    # +20 clipped: (255, 30, 148) (20, 255, 84) (220, 120, 122); x1.5 clipped: ...
    np.testing.assert_array_equal(out, [[[255, 45, 222], [30, 255, 126], [255, 180, 183]]])
    assert rng.done() and out.dtype == np.uint8


def test_photometric_contrast_last_truncates_and_brightness_clips_at_zero():
    rng = ScriptedRng(coin(1), ("uniform", (-32, 32), -20.0), coin(0), coin(0), coin(0),
                      coin(1), ("uniform", (0.5, 1.5), 0.5))
    out = photometric_distortion(PIXELS, rng)
    # -20 clipped at 0: (230, 0, 108) (0, 235, 44) (180, 80, 82); x0.5 truncated to uint8
    np.testing.assert_array_equal(out, [[[115, 0, 54], [0, 117, 22], [90, 40, 41]]])
    assert rng.done()


def test_photometric_all_skipped_is_the_identity():
    for contrast_first in (0, 1):
        # brightness, order, contrast (first or last), saturation, hue: five coins either way
        rng = ScriptedRng(coin(0), coin(contrast_first), coin(0), coin(0), coin(0))
        np.testing.assert_array_equal(photometric_distortion(PIXELS, rng), PIXELS)
        assert rng.done()


def test_photometric_saturation_and_hue_on_opencv_hsv():
    rng = ScriptedRng(coin(0), coin(0), coin(1), ("uniform", (0.5, 1.5), 0.5),
                      coin(1), ("integers", (-18, 18), 5), coin(0))
    out = photometric_distortion(PIXELS, rng)
    hsv = cv2.cvtColor(PIXELS, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = (hsv[..., 1].astype(np.float32) * 0.5).astype(np.uint8)  # saturation x0.5
    step = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    hsv = cv2.cvtColor(step, cv2.COLOR_RGB2HSV)
    assert hsv[0, 2, 0] == 179  # (200, 100, 102) is at hue 358.8 deg: +5 wraps around OpenCV's 0..180 scale
    hsv[..., 0] = [(int(h) + 5) % 180 for h in hsv[0, :, 0]]
    np.testing.assert_array_equal(out, cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    assert cv2.cvtColor(out, cv2.COLOR_RGB2HSV)[0, 2, 0] == 4
    assert rng.done()


# ---------------------------------------------------------------------------------------------- colour jitter
def test_color_jitter_is_torchvision_adjust_in_the_drawn_order():
    img = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    # brightness 1.5 -> factor range clamped at 0: [0, 2.5]; contrast 0.3 -> [0.7, 1.3]; saturation 0 -> skipped
    rng = ScriptedRng(("uniform", (0.0, 2.5), 1.7), ("uniform", (1 - 0.3, 1 + 0.3), 0.8),
                      ("permutation", (3,), np.array([1, 2, 0])))
    out = color_jitter(img, (1.5, 0.3, 0.0), rng)
    expected = TF.adjust_brightness(TF.adjust_contrast(Image.fromarray(img), 0.8), 1.7)
    np.testing.assert_array_equal(out, np.asarray(expected))
    assert rng.done() and out.dtype == np.uint8 and out.flags.writeable
    other_order = np.asarray(TF.adjust_contrast(TF.adjust_brightness(Image.fromarray(img), 1.7), 0.8))
    assert not np.array_equal(out, other_order)  # the order matters, so the drawn one is used


def test_color_jitter_saturation_alone():
    img = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    rng = ScriptedRng(("uniform", (1 - 0.5, 1 + 0.5), 0.6), ("permutation", (3,), np.array([2, 0, 1])))
    out = color_jitter(img, (0, 0, 0.5), rng)
    np.testing.assert_array_equal(out, np.asarray(TF.adjust_saturation(Image.fromarray(img), 0.6)))
    assert rng.done()


# ---------------------------------------------------------------------------------------------- train transform
def _blocky_sample(h=40, w=60):
    """Image and label constant on 2x2 blocks: a 2x downscale is exact for bilinear and nearest alike."""
    rng = np.random.default_rng(3)
    small_image = rng.integers(0, 256, (h // 2, w // 2, 3), dtype=np.uint8)
    small_label = rng.integers(0, 19, (h // 2, w // 2), dtype=np.uint8)
    image = np.repeat(np.repeat(small_image, 2, 0), 2, 1)
    label = np.repeat(np.repeat(small_label, 2, 0), 2, 1)
    return {"image": image, "label": label, "name": "n"}, small_image, small_label


def test_train_transform_halves_crops_and_flips_as_drawn():
    sample, small_image, small_label = _blocky_sample()
    aug = TrainAugmentation(crop_size=(16, 24), ratio_range=(0.5, 2.0), cat_max_ratio=1.0, photometric=False)
    rng = ScriptedRng(("uniform", (0.5, 2.0), 0.5),   # 60x40 fit into (30, 20) -> 30x20
                      ("integers", (0, 20 - 16 + 1), 3), ("integers", (0, 30 - 24 + 1), 6),
                      ("random", (), 0.49))           # < 0.5: flipped
    out = TrainTransform(aug)(sample, rng)
    assert rng.done()
    np.testing.assert_array_equal(out["label"].numpy(), small_label[3:19, 6:30][:, ::-1])
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), small_image[3:19, 6:30][:, ::-1])
    assert out["valid_size"] == (16, 24) and out["name"] == "n"


def test_train_transform_pads_a_small_crop_and_does_not_flip_at_the_probability():
    sample, small_image, small_label = _blocky_sample()
    aug = TrainAugmentation(crop_size=(24, 40), ratio_range=(0.5, 2.0), cat_max_ratio=1.0, photometric=False)
    rng = ScriptedRng(("uniform", (0.5, 2.0), 0.5), ("integers", (0, 1), 0), ("integers", (0, 1), 0),
                      ("random", (), 0.5))            # not < 0.5: not flipped
    out = TrainTransform(aug)(sample, rng)
    assert rng.done() and out["valid_size"] == (20, 30)
    label, image = out["label"].numpy(), out["image"].permute(1, 2, 0).numpy()
    assert label.shape == (24, 40) and image.shape == (24, 40, 3)
    np.testing.assert_array_equal(label[:20, :30], small_label)
    np.testing.assert_array_equal(image[:20, :30], small_image)
    assert (label[20:] == 255).all() and (label[:, 30:] == 255).all()
    assert (image[20:] == 0).all() and (image[:, 30:] == 0).all()


def test_train_transform_runs_photometric_then_jitter_after_the_flip():
    sample, small_image, _ = _blocky_sample()
    aug = TrainAugmentation(crop_size=(20, 30), rescale="none", cat_max_ratio=1.0, color_jitter=(0.0, 0.0, 0.5))
    rng = ScriptedRng(("integers", (0, 21), 0), ("integers", (0, 31), 0), ("random", (), 0.9),
                      coin(1), ("uniform", (-32, 32), 10.0), coin(0), coin(0), coin(0), coin(0),  # brightness +10
                      ("uniform", (0.5, 1.5), 1.2), ("permutation", (3,), np.array([0, 1, 2])))  # saturation x1.2
    out = TrainTransform(aug)(sample, rng)
    assert rng.done()
    bright = np.clip(sample["image"][:20, :30].astype(np.int32) + 10, 0, 255).astype(np.uint8)
    expected = np.asarray(TF.adjust_saturation(Image.fromarray(bright), 1.2))
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), expected)


def test_rescale_draws():
    choices = TrainTransform(TrainAugmentation(rescale="short_edge_choices", short_edge_choices=(256, 512, 1024),
                                               max_long_edge=1500))
    rng = ScriptedRng(("integers", (3,), 2))
    assert choices.target_size(1914, 1052, rng) == (1500, 824) and rng.done()  # 1024 short -> long 1863 capped
    based = TrainTransform(TrainAugmentation(ratio_range=(0.5, 2.0), base_size=(2048, 512)))
    rng = ScriptedRng(("uniform", (0.5, 2.0), 1.5))
    assert based.target_size(1914, 1052, rng) == (1397, 768) and rng.done()  # fit into (3072, 768)
    for rescale, extra, size in (("fixed", {"fixed_size": (77, 43)}, (77, 43)), ("none", {}, (1914, 1052))):
        rng = ScriptedRng()
        assert TrainTransform(TrainAugmentation(rescale=rescale, **extra)).target_size(1914, 1052, rng) == size


def test_rescale_size_when_the_long_edge_binds():
    assert rescale_size(4000, 1000, (2048, 1024)) == (2048, 512)  # min(2048 / 4000, 1024 / 1000) = 0.512
    assert rescale_size(1000, 4000, (1024, 2048)) == (512, 2048)


def test_shortest_edge_size_at_the_cap_and_rounding():
    assert shortest_edge_size(4096, 1024, 512, 2048) == (2048, 512)  # exactly at the cap
    assert shortest_edge_size(3, 2, 3, 100) == (5, 3)  # 4.5 rounds half up
    assert shortest_edge_size(100, 30, 20, 50) == (50, 15)  # capped: 66.7 x 20 scaled by 0.75


def test_crop_at_exactly_cat_max_ratio_is_redrawn():
    label = np.zeros((4, 5), np.uint8)
    label[:, 4] = 1                      # 16 vs 4 pixels: 0.8, not < 0.8 -> 10 redraws
    script = [("integers", (0, 1), 0)] * 22
    rng = ScriptedRng(*script)
    assert random_crop_box(label, (4, 5), 0.8, rng) == (0, 4, 0, 5) and rng.done()
    rng = ScriptedRng(*script[:2])
    assert random_crop_box(label, (4, 5), 0.81, rng) == (0, 4, 0, 5) and rng.done()
    rng = ScriptedRng(*script[:2])  # crop larger than the label: clamped to it; ratio 1 draws once
    assert random_crop_box(label, (9, 9), 1.0, rng) == (0, 4, 0, 5) and rng.done()


@pytest.mark.parametrize("kwargs,message", [
    ({"rescale": "bogus"}, "rescale must be one of ('ratio_range', 'short_edge_choices', 'fixed', 'none'), got 'bogus'"),
    ({"rescale": "short_edge_choices"}, "rescale='short_edge_choices' needs a non-empty short_edge_choices"),
    ({"rescale": "fixed"}, "rescale='fixed' needs fixed_size=(w, h)"),
    ({"ratio_range": (0.0, 1.0)}, "bad ratio_range (0.0, 1.0)"),
    ({"ratio_range": (2.0, 1.0)}, "bad ratio_range (2.0, 1.0)"),
    ({"crop_size": (0, 8)}, "bad crop_size (0, 8)"),
    ({"color_jitter": (0.8, 0.8)},
     "color_jitter must be 3 non-negative strengths (brightness, contrast, saturation), got (0.8, 0.8)"),
    ({"color_jitter": (0.8, -0.1, 0.8)},
     "color_jitter must be 3 non-negative strengths (brightness, contrast, saturation), got (0.8, -0.1, 0.8)"),
])
def test_augmentation_errors_in_full(kwargs, message):
    with pytest.raises(ValueError) as err:
        TrainAugmentation(**kwargs)
    assert err.value.args[0] == message


def test_augmentation_edge_values_are_accepted():
    TrainAugmentation(ratio_range=(1.0, 1.0), crop_size=(1, 1), color_jitter=(0.0, 0.0, 0.0))
    TrainAugmentation(rescale="ratio_range", ratio_range=(0.1, 0.1))
    TrainAugmentation(rescale="none", ratio_range=(0.0, -1.0))  # the ratio range only matters for ratio_range


# ---------------------------------------------------------------------------------------------- test transform
def test_test_transform_prehalves_then_crops_then_resizes_the_image_only():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (31, 43, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (31, 43), dtype=np.uint8)
    tf = TestTransform((12, 6), prehalve=True, center_crop=HeightCenterCrop(10, (10, 12)))
    out = tf({"image": image, "label": label, "name": "x"})
    # halved: 15x21 (every odd pixel); height 10: width int(21 / 15 * 10) = 14; centre 12 columns from 1
    half = label[1::2, 1::2][:15, :21]
    rows = np.floor((np.arange(10) + 0.5) * 15 / 10).astype(int)
    cols = np.floor((np.arange(14) + 0.5) * 21 / 14).astype(int)
    np.testing.assert_array_equal(out["label"].numpy(), half[rows][:, cols][:, 1:13])
    assert out["ori_size"] == (10, 12) and tuple(out["image"].shape) == (3, 6, 7)  # (12, 6) fit: 7.2 x 6
    assert out["name"] == "x"


def test_test_transform_resizes_bilinear_and_skips_an_equal_size():
    image = np.repeat(np.repeat(np.array([[0, 100], [200, 40]], np.uint8), 2, 0), 2, 1)[..., None].repeat(3, 2)
    out = TestTransform((2, 2))({"image": image, "label": np.zeros((4, 4), np.uint8)})
    np.testing.assert_array_equal(out["image"][0].numpy(), [[0, 100], [200, 40]])  # exact 2x bilinear
    same = TestTransform((4, 4))({"image": image, "label": np.zeros((4, 4), np.uint8)})
    assert torch.equal(same["image"], torch.from_numpy(image).permute(2, 0, 1))
    up = TestTransform((8, 8))({"image": image, "label": np.zeros((4, 4), np.uint8)})["image"][0].numpy()
    # output column x samples input column (x + 0.5) / 2 - 0.5: 1.25 and 1.75 blend the 0 and 100 columns 3:1, 1:3
    assert up.shape == (8, 8) and list(up[0, :6]) == [0, 0, 0, 25, 75, 100]


def test_test_transform_repr_and_arguments():
    crop = HeightCenterCrop(1536, (1536, 1536), label_pad=0)
    assert repr(TestTransform(None)) == "TestTransform(resize=None)"
    assert repr(TestTransform([1024.0, 512.0], prehalve=True)) == "TestTransform(resize=(1024, 512), prehalve=True)"
    assert repr(TestTransform((2048, 1024), center_crop=crop)) == (
        f"TestTransform(resize=(2048, 1024), center_crop={crop})")
    assert (crop.image_pad, HeightCenterCrop(5, (5, 5)).label_pad) == (0, 255)
    assert repr(TrainTransform(TrainAugmentation())) == f"TrainTransform({TrainAugmentation()!r})"


def test_prehalve_keeps_at_least_one_pixel():
    image, label = np.zeros((1, 3, 3), np.uint8), np.array([[4, 5, 6]], np.uint8)
    img2, lab2 = prehalve(image, label)
    assert lab2.shape == (1, 1) and img2.shape == (1, 1, 3)


def test_height_center_crop_pads_columns_and_crops_rows():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (47, 31, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (47, 31), dtype=np.uint8)
    img2, lab2 = height_center_crop(image, label, HeightCenterCrop(47, (40, 36), image_pad=9, label_pad=3))
    # rows: centre 40 of 47 from round(3.5) = 4; columns: 5 padded, 2 left and 3 right
    np.testing.assert_array_equal(lab2[:, 2:33], label[4:44])
    np.testing.assert_array_equal(img2[:, 2:33], image[4:44])
    assert (lab2[:, :2] == 3).all() and (lab2[:, 33:] == 3).all() and lab2.shape == (40, 36)
    assert (img2[:, :2] == 9).all() and (img2[:, 33:] == 9).all() and img2.shape == (40, 36, 3)
    assert img2.flags.c_contiguous and lab2.flags.c_contiguous


def test_photometric_arithmetic_is_float32_as_in_mmseg():
    # 90 * 0.7 is 63.0000002 in float32 (mmseg's convert) but 62.9999999 in float64: truncated to 63, not 62
    rng = ScriptedRng(coin(0), coin(0), coin(0), coin(0), coin(1), ("uniform", (0.5, 1.5), 0.7))
    out = photometric_distortion(np.full((1, 1, 3), 90, np.uint8), rng)
    assert out.tolist() == [[[63, 63, 63]]] and rng.done()


def test_a_single_pixel_class_counts_for_cat_max_ratio():
    label = np.array([[0, 0, 1]], np.uint8)  # 2 vs 1 pixels: 0.67 < 0.75, accepted at the first draw
    rng = ScriptedRng(("integers", (0, 1), 0), ("integers", (0, 1), 0))
    assert random_crop_box(label, (1, 3), 0.75, rng) == (0, 1, 0, 3) and rng.done()


def test_fixed_rescale_to_a_square_resizes_a_landscape_sample():
    sample, _, _ = _blocky_sample()  # 40 x 60 -> 60 x 60 (the width already matches)
    aug = TrainAugmentation(crop_size=(60, 60), rescale="fixed", fixed_size=(60, 60), cat_max_ratio=1.0,
                            photometric=False, hflip_prob=0.0)
    rng = ScriptedRng(("integers", (0, 1), 0), ("integers", (0, 1), 0), ("random", (), 0.0))
    out = TrainTransform(aug)(sample, rng)
    assert out["valid_size"] == (60, 60) and rng.done()


def test_train_transform_pads_rows_only():
    sample, small_image, small_label = _blocky_sample()
    aug = TrainAugmentation(crop_size=(24, 30), ratio_range=(0.5, 2.0), cat_max_ratio=1.0, photometric=False)
    rng = ScriptedRng(("uniform", (0.5, 2.0), 0.5), ("integers", (0, 1), 0), ("integers", (0, 1), 0),
                      ("random", (), 0.9))
    out = TrainTransform(aug)(sample, rng)
    label = out["label"].numpy()
    assert label.shape == (24, 30) and out["valid_size"] == (20, 30) and (label[20:] == 255).all()
    np.testing.assert_array_equal(label[:20], small_label)


def test_height_center_crop_of_a_one_pixel_wide_image():
    image, label = np.full((10, 1, 3), 50, np.uint8), np.full((10, 1), 7, np.uint8)
    img2, lab2 = height_center_crop(image, label, HeightCenterCrop(5, (5, 3), image_pad=0, label_pad=255))
    # width max(1, int(1 / 10 * 5)) = 1, padded by one column on each side
    assert lab2.tolist() == [[255, 7, 255]] * 5 and (img2[:, 1] == 50).all() and (img2[:, [0, 2]] == 0).all()


def test_height_center_crop_pads_rows_and_columns():
    label = np.arange(100, dtype=np.uint8).reshape(10, 10)
    image = np.repeat(label[..., None], 3, 2)
    img2, lab2 = height_center_crop(image, label, HeightCenterCrop(10, (12, 14), image_pad=0, label_pad=255))
    expected = np.full((12, 14), 255, np.uint8)
    expected[1:11, 2:12] = label  # rows padded 1 + 1, columns 2 + 2
    np.testing.assert_array_equal(lab2, expected)
    assert img2.shape == (12, 14, 3)
