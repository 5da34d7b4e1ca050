import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from benchmarks.evaluate import (
    EvaluationError,
    confusion_path,
    evaluate_split,
    infer_logits,
    load_confusions,
    partial_path,
    score_file,
    slide_windows,
)
from benchmarks.protocols import InferenceSpec

C = 5
SLIDE = InferenceSpec(mode="slide", crop_size=(16, 16), stride=(11, 11))
WHOLE = InferenceSpec(mode="whole", crop_size=None, stride=None)


class FakeSplit(Dataset):
    """Tiny in-memory test split: images test-resized to (h, w), labels at the larger native size."""

    def __init__(self, n=5, h=20, w=28, native=(40, 56), fail_at=None, with_names=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            label = torch.randint(0, C, native, generator=g)
            label[torch.rand(native, generator=g) < 0.1] = 255
            self.items.append(dict(image=torch.rand(3, h, w, generator=g) * 255, label=label,
                                   name=f"img_{i:03d}", ori_size=native))
        self.fail_at = fail_at
        self.loads = 0
        if with_names:
            self.names = [it["name"] for it in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.loads += 1
        if i == self.fail_at:
            raise OSError(f"cannot read /data/{self.items[i]['name']}.png")
        return self.items[i]


def conv_predict(seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, C, 1)
    return lambda x: conv(x / 255.0)


class CountingModel:
    def __init__(self, fail_on_call=None):
        self.fn = conv_predict()
        self.calls = 0
        self.fail_on_call = fail_on_call

    def predict(self, images):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.fn(images)


# ---------------------------------------------------------------------------------------------- windows
def test_slide_windows_examples_from_spec():
    boxes = slide_windows(512, 1024, (512, 512), (341, 341))
    assert sorted({b[2] for b in boxes}) == [0, 341, 512]
    assert len(boxes) == 3 and all(b[1] - b[0] == 512 and b[3] - b[2] == 512 for b in boxes)
    boxes = slide_windows(720, 1280, (512, 512), (341, 341))
    assert len(boxes) == 8
    assert sorted({b[0] for b in boxes}) == [0, 208] and sorted({b[2] for b in boxes}) == [0, 341, 682, 768]
    assert slide_windows(300, 400, (512, 512), (341, 341)) == [(0, 300, 0, 400)]
    assert slide_windows(300, 1000, (512, 512), (341, 341)) == [(0, 300, 0, 512), (0, 300, 341, 853),
                                                                (0, 300, 488, 1000)]


def test_slide_windows_cover_image():
    h, w = 37, 53
    cover = np.zeros((h, w), int)
    for y0, y1, x0, x1 in slide_windows(h, w, (16, 16), (11, 11)):
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1


# ---------------------------------------------------------------------------------------------- inference
def test_slide_equals_whole_for_translation_equivariant_model():
    predict = conv_predict()
    img = torch.rand(1, 3, 37, 53) * 255
    whole = infer_logits(predict, img, WHOLE, C)
    slide = infer_logits(predict, img, SLIDE, C)
    assert slide.shape == (1, C, 37, 53) and slide.dtype == torch.float32
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)
    batched = infer_logits(predict, img, SLIDE, C, batch_windows=4)
    torch.testing.assert_close(batched, slide, rtol=1e-5, atol=1e-5)
    flipped = infer_logits(predict, img, InferenceSpec("slide", (16, 16), (11, 11), flip=True), C)
    torch.testing.assert_close(flipped, whole, rtol=1e-5, atol=1e-5)


def test_window_batching_calls():
    model = CountingModel()
    img = torch.rand(1, 3, 37, 53) * 255
    n = len(slide_windows(37, 53, (16, 16), (11, 11)))
    infer_logits(model, img, SLIDE, C)
    assert model.calls == n
    model.calls = 0
    infer_logits(model, img, SLIDE, C, batch_windows=4)
    assert model.calls == -(-n // 4)


def test_multiscale_averages_passes():
    predict = conv_predict()
    img = torch.rand(1, 3, 20, 28) * 255
    spec = InferenceSpec(mode="whole", crop_size=None, stride=None, scales=(1.0, 0.5))
    half = torch.nn.functional.interpolate(img, size=(10, 14), mode="bilinear", align_corners=False)
    back = torch.nn.functional.interpolate(predict(half), size=(20, 28), mode="bilinear", align_corners=False)
    expected = (predict(img) + back) / 2
    torch.testing.assert_close(infer_logits(predict, img, spec, C), expected)


def test_bad_predict_output_is_reported():
    with pytest.raises(ValueError, match="expected scores of shape"):
        infer_logits(lambda x: x, torch.zeros(1, 3, 8, 8), WHOLE, C)


# ---------------------------------------------------------------------------------------------- evaluation
def _expected(dataset, predict, spec):
    """Written out in plain torch/numpy: the 1x1 conv is translation equivariant, so every window mode gives
    the whole-image scores; bilinear upsampling to the native label, argmax, a confusion from np.add.at."""
    cms = []
    for item in dataset.items:
        logits = predict(item["image"][None])
        up = torch.nn.functional.interpolate(logits, size=tuple(item["label"].shape), mode="bilinear",
                                             align_corners=False)
        pred, label = up.argmax(1)[0].numpy(), item["label"].numpy()
        keep = label != 255
        cm = np.zeros((C, C), dtype=np.int64)
        np.add.at(cm, (label[keep], pred[keep]), 1)
        cms.append(cm)
    return np.stack(cms)


def test_scores_at_native_label_size_and_per_image_file(tmp_path):
    ds = FakeSplit(n=4)
    predict = conv_predict()
    res = evaluate_split(predict, ds, SLIDE, key="cityscapes", num_classes=C, out_dir=tmp_path, progress=False)
    expected = _expected(ds, predict, SLIDE)
    # the label (40x56) is larger than the test image (20x28): every non-ignored native pixel is scored
    assert res.confusion.sum() == sum(int((it["label"] != 255).sum()) for it in ds.items)
    np.testing.assert_array_equal(res.confusion, expected.sum(0))
    assert res.per_image_path == str(confusion_path(tmp_path, "cityscapes"))
    names, cms = load_confusions(res.per_image_path)
    assert names == [f"img_{i:03d}" for i in range(4)] and cms.dtype == np.int64 and cms.shape == (4, C, C)
    np.testing.assert_array_equal(cms, expected)
    np.testing.assert_array_equal(cms.sum(0), res.confusion)
    total = expected.sum(0).astype(np.float64)
    tp, union = np.diag(total), total.sum(0) + total.sum(1) - np.diag(total)
    assert res.num_images == 4 and res.score.miou == pytest.approx(100 * np.mean(tp[union > 0] / union[union > 0]))
    assert res.score.acc == pytest.approx(100 * tp.sum() / total.sum()) and res.score.num_images == 4
    assert score_file(res.per_image_path) == res.score
    assert not partial_path(tmp_path, "cityscapes").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_nearest_upsampled_prediction_would_differ(tmp_path):
    """Resizing logits (not labels, not argmax maps) matters: bilinear logits give a different map."""
    ds = FakeSplit(n=1, h=6, w=6, native=(24, 24))
    predict = conv_predict(3)
    logits = infer_logits(predict, ds.items[0]["image"][None], WHOLE, C)
    bilinear = torch.nn.functional.interpolate(logits, size=(24, 24), mode="bilinear", align_corners=False).argmax(1)[0]
    nearest = torch.nn.functional.interpolate(logits.argmax(1, keepdim=True).float(), size=(24, 24))[0, 0].long()
    assert not torch.equal(bilinear, nearest)
    res = evaluate_split(predict, ds, WHOLE, key="x", num_classes=C, out_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(res.confusion, _expected(ds, predict, WHOLE)[0])


def test_resume_after_load_failure(tmp_path):
    clean = evaluate_split(conv_predict(), FakeSplit(n=7), SLIDE, key="bdd100k", num_classes=C,
                           out_dir=tmp_path / "clean", progress=False)
    out = tmp_path / "run"
    with pytest.raises(EvaluationError, match=r"image #4\b.*img_004") as err:
        evaluate_split(conv_predict(), FakeSplit(n=7, fail_at=4), SLIDE, key="bdd100k", num_classes=C,
                       out_dir=out, progress=False, checkpoint_every=2)
    assert isinstance(err.value.__cause__, OSError)
    names, _ = load_confusions(partial_path(out, "bdd100k"))
    assert sorted(names) == [f"img_{i:03d}" for i in range(4)]
    assert not confusion_path(out, "bdd100k").exists()

    model = CountingModel()
    n_windows = len(slide_windows(20, 28, (16, 16), (11, 11)))
    res = evaluate_split(model, FakeSplit(n=7), SLIDE, key="bdd100k", num_classes=C, out_dir=out,
                         progress=False, resume=True)
    assert model.calls == 3 * n_windows  # only images 4, 5, 6 were predicted
    np.testing.assert_array_equal(res.confusion, clean.confusion)
    names, cms = load_confusions(res.per_image_path)
    assert names == [f"img_{i:03d}" for i in range(7)]
    np.testing.assert_array_equal(cms, load_confusions(clean.per_image_path)[1])
    assert not partial_path(out, "bdd100k").exists()


def test_resume_after_predict_failure_names_image(tmp_path):
    n_windows = len(slide_windows(20, 28, (16, 16), (11, 11)))
    failing = CountingModel(fail_on_call=2 * n_windows + 1)  # first window of image 2
    with pytest.raises(EvaluationError, match="img_002") as err:
        evaluate_split(failing, FakeSplit(n=5), SLIDE, key="mapillary", num_classes=C, out_dir=tmp_path,
                       progress=False)
    assert "resume=True" in str(err.value) and "out of memory" in str(err.value)
    names, _ = load_confusions(partial_path(tmp_path, "mapillary"))  # saved on the exception
    assert names == ["img_000", "img_001"]

    ds = FakeSplit(n=5, with_names=True)
    res = evaluate_split(conv_predict(), ds, SLIDE, key="mapillary", num_classes=C, out_dir=tmp_path,
                         progress=False, resume=True)
    assert ds.loads == 3  # finished images are skipped without loading them (dataset.names)
    np.testing.assert_array_equal(res.confusion, _expected(ds, conv_predict(), SLIDE).sum(0))


def test_resume_of_finished_split_reuses_file(tmp_path):
    first = evaluate_split(conv_predict(), FakeSplit(n=3), WHOLE, key="c", num_classes=C, out_dir=tmp_path,
                           progress=False)
    model = CountingModel()
    again = evaluate_split(model, FakeSplit(n=3), WHOLE, key="c", num_classes=C, out_dir=tmp_path,
                           progress=False, resume=True)
    assert model.calls == 0
    np.testing.assert_array_equal(again.confusion, first.confusion)


def test_autocast_bf16_on_cpu(tmp_path):
    res = evaluate_split(conv_predict(), FakeSplit(n=2), SLIDE, key="c", num_classes=C, out_dir=tmp_path,
                         progress=False, autocast_dtype=torch.bfloat16, batch_windows=3)
    fp32 = _expected(FakeSplit(n=2), conv_predict(), SLIDE).sum(0)
    assert res.num_images == 2 and res.confusion.sum() == fp32.sum()
    assert np.abs(res.confusion - fp32).sum() / 2 <= 0.02 * fp32.sum()  # bf16 moves at most 2% of the pixels


def test_load_confusions_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluate_split"):
        load_confusions(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="missing arrays"):
        load_confusions(tmp_path / "bad.npz")


@pytest.mark.parametrize("label_hw,logit_hw", [((128, 256), (64, 128)), ((100, 100), (37, 37)), ((33, 50), (7, 9))])
def test_resized_argmax_is_bit_identical_to_full_resize_then_argmax(label_hw, logit_hw):
    """The fixtures' label sizes (pseudo Cityscapes 256x128, pseudo Mapillary 100x100): scoring one class at a
    time gives the labels of the one-shot float32 resize, ties included (lower class wins, as argmax)."""
    from benchmarks.evaluate import resized_argmax

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, *logit_hw, generator=g)
    logits[:, 6] = logits[:, 1] = logits.abs().amax(1) + 1  # exact ties across chunks
    logits[1, 17] = logits[1, 13]                          # and ties that only sometimes win
    expected = torch.nn.functional.interpolate(logits, size=label_hw, mode="bilinear",
                                               align_corners=False).argmax(1)
    got = resized_argmax(logits, label_hw)
    assert got.dtype == torch.int64 and torch.equal(got, expected)


def test_evaluate_split_takes_the_autocast_of_the_run_numerics(tmp_path, monkeypatch):
    """evaluate_split(numerics=...) enters Numerics.autocast, the context the trainer uses."""
    from benchmarks.numerics import Numerics, resolve_numerics

    entered = []
    original = Numerics.autocast

    def spy(self, device_type):
        entered.append(device_type)
        return original(self, device_type)

    monkeypatch.setattr(Numerics, "autocast", spy)
    data = [{"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "label": torch.zeros(8, 8, dtype=torch.uint8),
             "name": "a"}]
    spec = InferenceSpec(mode="whole")
    evaluate_split(lambda x: torch.zeros(x.shape[0], 19, *x.shape[-2:]), data, spec, key="k", out_dir=tmp_path,
                   progress=False, numerics=resolve_numerics("fp32", "cpu"))
    assert entered == ["cpu"]
