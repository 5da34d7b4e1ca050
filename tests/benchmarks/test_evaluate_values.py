"""benchmarks.evaluate against an independent computation written out here in plain torch/numpy: the window
grid listed by hand, window scores summed and divided by the per-pixel count, bilinear upsampling with
``F.interpolate``, argmax, a confusion matrix from ``np.add.at`` and the mIoU formula. The model is *not*
translation equivariant (it adds a ramp over each crop's own coordinates), so a wrong window, count or
flip changes the numbers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.evaluate import (
    confusion_path,
    evaluate_split,
    infer_logits,
    load_confusions,
    partial_path,
    resize_logits,
    save_confusions,
    score_file,
    slide_windows,
)
from benchmarks.protocols import InferenceSpec

C = 4
SLIDE = InferenceSpec(mode="slide", crop_size=(16, 16), stride=(11, 11))
# h=20, w=28, crop 16, stride 11: rows ceil(4/11)+1 = 2, columns ceil(12/11)+1 = 3, the last shifted back inside
BOXES_20x28 = [(0, 16, 0, 16), (0, 16, 11, 27), (0, 16, 12, 28), (4, 20, 0, 16), (4, 20, 11, 27), (4, 20, 12, 28)]

G = torch.Generator().manual_seed(0)
WEIGHT, BIAS = torch.randn(C, 3, generator=G), torch.randn(C, generator=G)


def positional_predict(x):
    """1x1 linear map plus a ramp over the crop's own (row, column) coordinates: depends on the window."""
    _, _, h, w = x.shape
    out = torch.einsum("oc,bchw->bohw", WEIGHT, x / 255.0) + BIAS[None, :, None, None]
    cols = torch.arange(w, dtype=torch.float32) / w
    rows = torch.arange(h, dtype=torch.float32) / h
    ramp = torch.arange(C, dtype=torch.float32)[:, None, None] * (cols[None, None, :] - 0.5 * rows[None, :, None])
    return out + ramp[None]


def reference_slide(image, boxes):
    scores = torch.zeros(1, C, *image.shape[-2:])
    count = torch.zeros(1, 1, *image.shape[-2:])
    for y0, y1, x0, x1 in boxes:
        scores[..., y0:y1, x0:x1] += positional_predict(image[None, :, y0:y1, x0:x1])
        count[..., y0:y1, x0:x1] += 1
    return scores / count


def reference_confusion(logits, label, ignore=255):
    pred = F.interpolate(logits, size=tuple(label.shape), mode="bilinear", align_corners=False).argmax(1)[0]
    keep = label != ignore
    cm = np.zeros((C, C), dtype=np.int64)
    np.add.at(cm, (label[keep].numpy(), pred[keep].numpy()), 1)
    return cm


def reference_miou(cm):
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return 100.0 * float(np.mean(tp[union > 0] / union[union > 0]))


class Split:
    def __init__(self, n=3, h=20, w=28, native=(50, 70), seed=1, names=False):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            label = torch.randint(0, C, native, generator=g)
            label[:, : native[1] // 5] = 3 - label[:, : native[1] // 5]  # some structure
            label[torch.rand(native, generator=g) < 0.15] = 255
            self.items.append(dict(image=torch.rand(3, h, w, generator=g) * 255, label=label, name=f"im{i}"))
        if names:
            self.names = [it["name"] for it in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


# ---------------------------------------------------------------------------------------------- windows
def test_window_grid_listed_by_hand():
    assert slide_windows(20, 28, (16, 16), (11, 11)) == BOXES_20x28
    # non-square crop and stride: rows use crop[0]/stride[0], columns crop[1]/stride[1]
    rows, cols = [(0, 8), (5, 13), (10, 18), (12, 20)], [(0, 12), (10, 22), (18, 30)]
    assert slide_windows(20, 30, (8, 12), (5, 10)) == [(*r, *c) for r in rows for c in cols]
    assert slide_windows(16, 16, (16, 16), (11, 11)) == [(0, 16, 0, 16)]  # exactly one crop: one window
    assert slide_windows(17, 16, (16, 16), (11, 11)) == [(0, 16, 0, 16), (1, 17, 0, 16)]
    for bad in ((0, 28, (16, 16), (11, 11)), (20, 0, (16, 16), (11, 11)), (20, 28, (0, 16), (11, 11)),
                (20, 28, (16, 0), (11, 11)), (20, 28, (16, 16), (0, 11)), (20, 28, (16, 16), (11, 0))):
        with pytest.raises(ValueError, match="positive"):
            slide_windows(*bad)


# ---------------------------------------------------------------------------------------------- inference
def test_slide_logits_equal_the_written_out_window_average():
    image = torch.rand(3, 20, 28, generator=torch.Generator().manual_seed(2)) * 255
    expected = reference_slide(image, BOXES_20x28)
    for batch_windows in (1, 4, 6):
        got = infer_logits(positional_predict, image[None], SLIDE, C, batch_windows=batch_windows)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(expected, positional_predict(image[None]), atol=1e-3)  # slide != whole here


def test_flip_and_scales_written_out():
    image = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(3)) * 255
    flip = InferenceSpec(mode="whole", crop_size=None, stride=None, flip=True)
    expected = (positional_predict(image) + positional_predict(image.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(infer_logits(positional_predict, image, flip, C), expected)
    # scale 0.7: 20 x 28 -> (14, 20) (19.6 rounds to 20), scores resized back bilinearly, passes averaged
    scales = InferenceSpec(mode="whole", crop_size=None, stride=None, scales=(1.0, 0.7))
    small = F.interpolate(image, size=(14, 20), mode="bilinear", align_corners=False)
    back = F.interpolate(positional_predict(small), size=(20, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(infer_logits(positional_predict, image, scales, C),
                               (positional_predict(image) + back) / 2)
    single = InferenceSpec(mode="whole", crop_size=None, stride=None, scales=(0.7,))
    torch.testing.assert_close(infer_logits(positional_predict, image, single, C), back)


def test_resize_logits_is_bilinear_without_corner_alignment():
    logits = torch.randn(1, C, 5, 7, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(resize_logits(logits, (11, 13)),
                               F.interpolate(logits, size=(11, 13), mode="bilinear", align_corners=False))
    assert resize_logits(logits, (5, 7)) is logits


def test_input_shape_errors():
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        infer_logits(positional_predict, torch.zeros(3, 8, 8), SLIDE, C)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        infer_logits(positional_predict, torch.zeros(1, 1, 8, 8), SLIDE, C)
    with pytest.raises(ValueError, match=r"returned \(1, 4, 8, 7\), expected scores of shape \(1, 4, 8, 8\)"):
        infer_logits(lambda x: x[:, :1].repeat(1, C, 1, 1)[..., :-1], torch.zeros(1, 3, 8, 8), SLIDE, C)
    with pytest.raises(ValueError, match="list"):
        infer_logits(lambda x: [x], torch.zeros(1, 3, 8, 8), SLIDE, C)
    with pytest.raises(TypeError, match="predict"):
        infer_logits(object(), torch.zeros(1, 3, 8, 8), SLIDE, C)


# ---------------------------------------------------------------------------------------------- evaluation
def test_evaluate_split_equals_the_written_out_pipeline(tmp_path):
    ds = Split(n=3)
    cms = [reference_confusion(reference_slide(it["image"], BOXES_20x28), it["label"]) for it in ds.items]
    res = evaluate_split(positional_predict, ds, SLIDE, key="bdd100k", num_classes=C, out_dir=tmp_path,
                         progress=False)
    names, stored = load_confusions(confusion_path(tmp_path, "bdd100k"))
    assert names == ["im0", "im1", "im2"]
    np.testing.assert_array_equal(stored, np.stack(cms))
    total = sum(cms)
    np.testing.assert_array_equal(res.confusion, total)
    assert res.key == "bdd100k" and res.num_images == 3
    assert res.per_image_path == str(tmp_path / "confusion_bdd100k.npz")
    assert res.score.miou == pytest.approx(reference_miou(total), rel=1e-12)
    assert res.score.acc == pytest.approx(100.0 * np.trace(total) / total.sum(), rel=1e-12)
    assert res.score.num_images == 3 and res.seconds > 0
    assert score_file(res.per_image_path).miou == pytest.approx(reference_miou(total), rel=1e-12)


def test_custom_ignore_index_and_channel_first_label(tmp_path):
    ds = Split(n=1)
    item = ds.items[0]
    label = item["label"].clone()
    label[label == 255] = 2  # class 2 is now the ignore value
    item["label"] = label[None]  # [1, H, W] labels are accepted
    res = evaluate_split(positional_predict, ds, SLIDE, key="k", num_classes=C, out_dir=tmp_path, progress=False,
                         ignore_index=2)
    expected = reference_confusion(reference_slide(item["image"], BOXES_20x28), label, ignore=2)
    np.testing.assert_array_equal(res.confusion, expected)
    assert expected[2].sum() == 0 and expected.sum() > 0


class RecordingModel:
    """Records, for each image, whether autocast was on and which images the partial file held."""

    def __init__(self, partial, windows):
        self.partial, self.windows, self.calls = partial, windows, 0
        self.autocast, self.partial_names = [], []

    def predict(self, x):
        if self.calls % self.windows == 0:
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            self.partial_names.append(load_confusions(self.partial)[0] if self.partial.exists() else [])
        self.calls += 1
        return positional_predict(x)


def test_partial_file_is_written_every_checkpoint_every_images(tmp_path):
    model = RecordingModel(partial_path(tmp_path, "m"), windows=len(BOXES_20x28))
    evaluate_split(model, Split(n=6), SLIDE, key="m", num_classes=C, out_dir=tmp_path, progress=False,
                   checkpoint_every=2)
    assert model.partial_names == [[], [], ["im0", "im1"], ["im0", "im1"], ["im0", "im1", "im2", "im3"],
                                   ["im0", "im1", "im2", "im3"]]
    assert not partial_path(tmp_path, "m").exists() and model.autocast == [False] * 6


def test_bf16_autocast_agrees_with_fp32(tmp_path):
    ds = Split(n=3)
    fp32 = evaluate_split(positional_predict, ds, SLIDE, key="a", num_classes=C, out_dir=tmp_path / "fp32",
                          progress=False)
    model = RecordingModel(tmp_path / "none.npz", windows=1)
    bf16 = evaluate_split(model, ds, SLIDE, key="a", num_classes=C, out_dir=tmp_path / "bf16", progress=False,
                          autocast_dtype=torch.bfloat16, batch_windows=3)
    assert model.autocast and all(model.autocast)  # the model really ran under autocast
    moved = np.abs(bf16.confusion - fp32.confusion).sum() / 2
    assert bf16.confusion.sum() == fp32.confusion.sum() and moved <= 0.02 * fp32.confusion.sum()
    assert bf16.score.miou == pytest.approx(fp32.score.miou, abs=1.0)
    # scores are accumulated in float32: the per-image files hold the same integer dtype
    assert load_confusions(bf16.per_image_path)[1].dtype == np.int64


def test_resume_rejects_a_file_with_other_classes(tmp_path):
    save_confusions(partial_path(tmp_path, "x"), ["im0"], np.zeros((1, 5, 5), np.int64), 5)
    with pytest.raises(ValueError, match="5 classes on disk, but num_classes=4"):
        evaluate_split(positional_predict, Split(n=2), SLIDE, key="x", num_classes=C, out_dir=tmp_path,
                       progress=False, resume=True)


def test_resume_drops_unknown_images_with_a_warning_and_rejects_duplicates(tmp_path):
    ds = Split(n=2, names=True)
    done = reference_confusion(reference_slide(ds.items[0]["image"], BOXES_20x28), ds.items[0]["label"])
    save_confusions(partial_path(tmp_path, "x"), ["im0", "gone"], np.stack([done, done]), C)
    with pytest.warns(UserWarning, match=r"1 image\(s\) in the partial file .*'gone'"):
        res = evaluate_split(positional_predict, ds, SLIDE, key="x", num_classes=C, out_dir=tmp_path,
                             progress=False, resume=True)
    assert load_confusions(res.per_image_path)[0] == ["im0", "im1"]
    dup = Split(n=2)
    dup.items[1]["name"] = "im0"
    with pytest.raises(Exception, match="duplicate image name 'im0'"):
        evaluate_split(positional_predict, dup, SLIDE, key="d", num_classes=C, out_dir=tmp_path, progress=False)


def test_save_confusions_shapes(tmp_path):
    path = save_confusions(tmp_path / "sub" / "e.npz", [], [], 3)
    names, cms = load_confusions(path)
    assert names == [] and cms.shape == (0, 3, 3)
    with pytest.raises(ValueError, match="2 names but confusion array of shape"):
        save_confusions(tmp_path / "b.npz", ["a", "b"], np.zeros((1, 3, 3)), 3)


def test_prefetching_workers_give_the_same_files_and_skip_finished_images(tmp_path):
    ds = Split(n=4, names=True)
    ref = evaluate_split(positional_predict, ds, SLIDE, key="w", num_classes=C, out_dir=tmp_path / "a", progress=False)
    got = evaluate_split(positional_predict, ds, SLIDE, key="w", num_classes=C, out_dir=tmp_path / "b", progress=False,
                         num_workers=1)
    names, cms = load_confusions(got.per_image_path)
    assert names == ["im0", "im1", "im2", "im3"]
    np.testing.assert_array_equal(cms, load_confusions(ref.per_image_path)[1])
    save_confusions(partial_path(tmp_path / "c", "w"), ["im0", "im1"], cms[:2], C)
    model = RecordingModel(tmp_path / "none.npz", windows=len(BOXES_20x28))
    res = evaluate_split(model, ds, SLIDE, key="w", num_classes=C, out_dir=tmp_path / "c", progress=False,
                         num_workers=1, resume=True)
    assert len(model.autocast) == 2  # only im2 and im3 were predicted
    np.testing.assert_array_equal(load_confusions(res.per_image_path)[1], cms)


def test_failure_message_without_names_gives_the_index_only(tmp_path):
    class Broken(Split):
        def __getitem__(self, i):
            if i == 1:
                raise OSError("unreadable")
            return super().__getitem__(i)

    with pytest.raises(Exception, match=r"failed on image #1: OSError: unreadable\. 1 finished image\(s\)"):
        evaluate_split(positional_predict, Broken(n=3), SLIDE, key="k", num_classes=C, out_dir=tmp_path,
                       progress=False)


class Tiny:
    """51 tiny images of 19 classes, names from the items only (a ``names`` list of the wrong length is ignored)."""

    names = ["only-one"]

    def __init__(self, n=51):
        g = torch.Generator().manual_seed(5)
        self.items = [dict(image=torch.rand(3, 4, 4, generator=g) * 255, name=f"t{i:02d}",
                           label=torch.tensor([[0, 18, 255, 7]] * 4)) for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_evaluate_split_defaults(tmp_path, capsys):
    whole = InferenceSpec(mode="whole", crop_size=None, stride=None)
    weight = torch.randn(19, 3, generator=torch.Generator().manual_seed(6))
    seen = []

    def predict(x):
        seen.append(load_confusions(partial_path(tmp_path, "d"))[0] if partial_path(tmp_path, "d").exists() else [])
        return torch.einsum("oc,bchw->bohw", weight, x / 255.0)

    save_confusions(confusion_path(tmp_path, "d"), ["t00"], np.zeros((1, 19, 19), np.int64), 19)  # stale: no resume
    res = evaluate_split(predict, Tiny(), whole, key="d", out_dir=tmp_path)  # num_classes 19, ignore 255
    assert res.confusion.shape == (19, 19) and res.confusion.sum() == 51 * 12  # 4 of 16 pixels ignored
    assert res.confusion[0].sum() == res.confusion[18].sum() == res.confusion[7].sum() == 51 * 4
    assert len(seen) == 51 and seen[49] == [] and seen[50] == [f"t{i:02d}" for i in range(50)]  # every 50 images
    assert load_confusions(res.per_image_path)[0][0] == "t00" and load_confusions(res.per_image_path)[1][0].sum() == 12
    assert "eval d" in capsys.readouterr().err  # a progress bar by default
