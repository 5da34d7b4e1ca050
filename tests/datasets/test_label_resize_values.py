"""Label-space resizes pinned pixel for pixel against nearest-neighbour sampling written out here
(source index ``floor((i + 0.5) * in / out)``, PIL's rule). The labels are random over all 19 ids, so a check
like "output ids are a subset of the input ids" would also pass for a bilinear (or bicubic) label resize."""

import numpy as np
import pytest

from datasets.transforms import HeightCenterCrop, TestTransform, height_center_crop, prehalve


def _nearest(label, out_h, out_w):
    h, w = label.shape
    ys = np.floor((np.arange(out_h) + 0.5) * h / out_h).astype(int)
    xs = np.floor((np.arange(out_w) + 0.5) * w / out_w).astype(int)
    return label[ys][:, xs]


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (31, 43, 3), dtype=np.uint8), rng.integers(0, 19, (31, 43), dtype=np.uint8)


def test_prehalve_label_is_nearest_at_half_size(pair):
    image, label = pair
    img2, lab2 = prehalve(image, label)
    assert lab2.shape == (15, 21) and img2.shape == (15, 21, 3)  # (w // 2, h // 2)
    np.testing.assert_array_equal(lab2, _nearest(label, 15, 21))
    np.testing.assert_array_equal(lab2, label[1::2, 1::2][:15, :21])  # the same, as a stride


def test_height_center_crop_label_values(pair):
    image, label = pair
    # height 31 -> 20, width int(43 / 31 * 20) = 27, centre crop of 20 columns from round(7 / 2) = 4
    img2, lab2 = height_center_crop(image, label, HeightCenterCrop(20, (20, 20)))
    np.testing.assert_array_equal(lab2, _nearest(label, 20, 27)[:, 4:24])
    assert img2.shape == (20, 20, 3)
    # taller target than the resized height: padded top/bottom (smaller half first) with label_pad
    img3, lab3 = height_center_crop(image, label, HeightCenterCrop(20, (25, 27), image_pad=7, label_pad=0))
    assert lab3.shape == (25, 27) and img3.shape == (25, 27, 3)
    np.testing.assert_array_equal(lab3[2:22], _nearest(label, 20, 27))
    assert (lab3[:2] == 0).all() and (lab3[22:] == 0).all() and (img3[:2] == 7).all() and (img3[22:] == 7).all()


def test_height_center_crop_keeps_a_label_of_the_right_height(pair):
    image, label = pair
    img2, lab2 = height_center_crop(image, label, HeightCenterCrop(31, (31, 40)))
    np.testing.assert_array_equal(lab2, label[:, 2:42])  # no resize; crop start round(3 / 2) = 2
    np.testing.assert_array_equal(img2, image[:, 2:42])


def test_test_transform_scores_at_the_label_it_was_given(pair):
    image, label = pair
    out = TestTransform((20, 10))({"image": image, "label": label, "name": "x"})
    np.testing.assert_array_equal(out["label"].numpy(), label)  # the image is resized, never the label
    assert tuple(out["image"].shape) == (3, 10, 14) and out["ori_size"] == (31, 43)
