"""benchmarks.evaluate details that a one-line change would break without changing a score on the usual inputs
(issue 19, mutation testing): the atomic write of the confusion files, their checks, the messages in full,
resume precedence and the partial file's order, the progress bar's counts, interrupts, edge sizes."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import benchmarks.evaluate as evaluate_mod
from benchmarks.evaluate import (
    EvaluationError,
    confusion_path,
    evaluate_split,
    infer_logits,
    load_confusions,
    partial_path,
    resized_argmax,
    save_confusions,
    score_file,
    slide_windows,
)
from benchmarks.protocols import InferenceSpec

C = 3
WHOLE = InferenceSpec(mode="whole", crop_size=None, stride=None)
WEIGHT = torch.randn(C, 3, generator=torch.Generator().manual_seed(11))


def linear_predict(x):
    return torch.einsum("oc,bchw->bohw", WEIGHT, x / 255.0)


def reference_cm(item, ignore=255):
    """Plain torch: bilinear resize of the linear scores to the label, argmax, confusion by np.add.at."""
    logits = linear_predict(torch.as_tensor(item["image"]).float()[None])
    label = torch.as_tensor(item["label"])
    label = label[0] if label.ndim == 3 else label
    pred = F.interpolate(logits, size=tuple(label.shape), mode="bilinear", align_corners=False).argmax(1)[0]
    keep = label != ignore
    cm = np.zeros((C, C), np.int64)
    np.add.at(cm, (label[keep].numpy(), pred[keep].numpy()), 1)
    return cm


class Items:
    def __init__(self, n=3, h=6, w=7, label_hw=(9, 11), names=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = [dict(image=torch.rand(3, h, w, generator=g) * 255,
                           label=torch.randint(0, C, label_hw, generator=g), name=f"n{i}") for i in range(n)]
        if names:
            self.names = [it["name"] for it in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def run(ds, out, **kwargs):
    kwargs.setdefault("progress", False)
    return evaluate_split(linear_predict, ds, WHOLE, key="k", num_classes=C, out_dir=out, **kwargs)


# ---------------------------------------------------------------------------------------------- files
def test_save_writes_a_temporary_file_beside_the_target_and_removes_it_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b" / "confusion_x.npz"  # parents created
    save_confusions(target, ["old"], np.ones((1, 2, 2), np.int64), 2)
    save_confusions(target, ["old"], np.ones((1, 2, 2), np.int64), 2)  # the folder exists: fine
    seen = []
    real_savez = np.savez

    def failing_savez(f, **arrays):
        seen.extend(p.name for p in target.parent.iterdir())
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        save_confusions(target, ["new"], np.zeros((1, 2, 2), np.int64), 2)
    tmp = [n for n in seen if n != target.name]
    assert len(tmp) == 1 and tmp[0].startswith(".confusion_x.npz.") and tmp[0].endswith(".tmp")
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # removed again
    assert load_confusions(target)[0] == ["old"]  # the old file is untouched

    def interrupted_savez(f, **arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        save_confusions(target, ["new"], np.zeros((1, 2, 2), np.int64), 2)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    monkeypatch.setattr(np, "savez", real_savez)


def test_saved_arrays_and_dtypes_on_disk(tmp_path):
    path = save_confusions(tmp_path / "c.npz", ("a", "b"), [np.eye(2) * 3, np.ones((2, 2)) * 2.0], 2)
    with np.load(path) as z:
        assert sorted(z.files) == ["confusion", "names"]
        assert z["confusion"].dtype == np.int64 and z["names"].dtype.kind == "U"
        assert z["names"].tolist() == ["a", "b"] and z["confusion"].tolist() == [[[3, 0], [0, 3]], [[2, 2], [2, 2]]]
    empty = save_confusions(tmp_path / "e.npz", [], [])  # default: 19 classes
    assert load_confusions(empty)[1].shape == (0, 19, 19)
    with pytest.raises(ValueError, match=r"^save_confusions: 2 names but confusion array of shape \(2, 2\)$"):
        save_confusions(tmp_path / "bad.npz", ["a", "b"], np.zeros((2, 2)), 2)


def test_load_confusions_checks_in_full(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^no confusion file at (.*)nope\.npz; run "
                                                r"evaluate_split\(\.\.\., out_dir=(.*)\) first$") as err:
        load_confusions(tmp_path / "nope.npz")
    assert str(tmp_path) in str(err.value)
    np.savez(tmp_path / "one.npz", names=np.array(["a"]))
    with pytest.raises(ValueError, match=r"one\.npz: not a confusion file \(missing arrays \['confusion'\]; "
                                         r"has \['names'\]\)$"):
        load_confusions(tmp_path / "one.npz")
    np.savez(tmp_path / "obj.npz", names=np.array(["a"], dtype=object), confusion=np.zeros((1, 2, 2), np.int64))
    with pytest.raises(ValueError, match="allow_pickle"):  # never unpickles
        load_confusions(tmp_path / "obj.npz")
    for bad in (np.zeros((2, 2), np.int64), np.zeros((2, 2, 2), np.int64), np.zeros((1, 2, 3), np.int64)):
        np.savez(tmp_path / "shape.npz", names=np.array(["a"]), confusion=bad)
        with pytest.raises(ValueError, match=r"shape\.npz: confusion array of shape .* does not match 1 names$"):
            load_confusions(tmp_path / "shape.npz")
    np.savez(tmp_path / "small.npz", names=np.array(["a", "b"]), confusion=np.ones((2, 2, 2), np.int32))
    names, cms = load_confusions(tmp_path / "small.npz")
    assert names == ["a", "b"] and cms.dtype == np.int64
    score = score_file(tmp_path / "small.npz")
    assert score.num_images == 2 and score.miou == pytest.approx(100 * 2 / 6)  # [[2,2],[2,2]]: IoU 2/6 each


# ---------------------------------------------------------------------------------------------- resume
def test_resume_prefers_the_final_file_and_flushes_results_then_the_rest(tmp_path):
    ds = Items(n=4, names=True)
    expected = [reference_cm(it) for it in ds.items]
    odd = np.full((C, C), 7, np.int64)
    save_confusions(confusion_path(tmp_path, "k"), ["n0"], expected[:1], C)
    save_confusions(partial_path(tmp_path, "k"), ["n0", "n3", "gone"], np.stack([odd, expected[3], odd]), C)

    class Stop(Exception):
        pass

    calls = []

    def predict(x):
        calls.append(1)
        if len(calls) == 2:
            raise Stop("second")
        return linear_predict(x)

    with pytest.raises(EvaluationError) as err:
        evaluate_split(predict, ds, WHOLE, key="k", num_classes=C, out_dir=tmp_path, progress=False, resume=True)
    assert str(err.value) == (f"evaluation of split 'k' failed on image #2 ('n2'): Stop: second. 4 finished image(s) "
                              f"are saved in {partial_path(tmp_path, 'k')}; to continue: the same command with "
                              f"--resume (evaluate_split(..., resume=True)).")
    names, cms = load_confusions(partial_path(tmp_path, "k"))
    assert names == ["n0", "n1", "n3", "gone"]  # this run's results in dataset order, then the rest
    np.testing.assert_array_equal(cms[:3], np.stack([expected[0], expected[1], expected[3]]))
    with pytest.warns(UserWarning, match=r"^k: 1 image\(s\) in the partial file are not in the dataset and are "
                                         r"dropped \(e\.g\. \['gone'\]\)$") as record:
        res = run(ds, tmp_path, resume=True)
    assert record[0].filename != evaluate_mod.__file__  # reported at a caller's line, not inside evaluate.py
    np.testing.assert_array_equal(load_confusions(res.per_image_path)[1], np.stack(expected))
    assert not partial_path(tmp_path, "k").exists()


def test_resume_without_names_loads_but_skips_finished_images(tmp_path):
    ds = Items(n=3)  # no names attribute: every item is loaded, finished ones are not predicted
    expected = [reference_cm(it) for it in ds.items]
    save_confusions(partial_path(tmp_path, "k"), ["n1"], expected[1:2], C)
    seen = []
    res = evaluate_split(lambda x: seen.append(1) or linear_predict(x), ds, WHOLE, key="k", num_classes=C,
                         out_dir=tmp_path, progress=False, resume=True)
    assert len(seen) == 2
    np.testing.assert_array_equal(load_confusions(res.per_image_path)[1], np.stack(expected))
    with pytest.raises(ValueError, match=r"confusion_k\.npz: 3 classes on disk, but num_classes=4$"):
        evaluate_split(linear_predict, ds, WHOLE, key="k", num_classes=4, out_dir=tmp_path, progress=False,
                       resume=True)


def test_the_warning_lists_three_unknown_images(tmp_path):
    ds = Items(n=1, names=True)
    others = [f"x{i}" for i in range(5)]
    save_confusions(partial_path(tmp_path, "k"), others, np.zeros((5, C, C), np.int64), C)
    with pytest.warns(UserWarning, match=r"5 image\(s\) .* \(e\.g\. \['x0', 'x1', 'x2'\]\)$"):
        run(ds, tmp_path, resume=True)


def test_keyboard_interrupt_saves_the_partial_file_and_propagates(tmp_path):
    ds = Items(n=3)
    calls = []

    def predict(x):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return linear_predict(x)

    with pytest.raises(KeyboardInterrupt):
        evaluate_split(predict, ds, WHOLE, key="k", num_classes=C, out_dir=tmp_path, progress=False)
    assert load_confusions(partial_path(tmp_path, "k"))[0] == ["n0", "n1"]
    # a failure before any image is finished leaves no partial file
    with pytest.raises(EvaluationError, match=r"failed on image #0 \('n0'\): ZeroDivisionError: .* 0 finished"):
        evaluate_split(lambda x: 1 / 0, ds, WHOLE, key="z", num_classes=C, out_dir=tmp_path, progress=False)
    assert not partial_path(tmp_path, "z").exists()


def test_prefetch_order_is_checked(tmp_path, monkeypatch):
    ds = Items(n=2)

    class Swapped:
        def __init__(self, dataset, **kwargs):
            self.pairs = [dataset[1], dataset[0]]

        def __iter__(self):
            return iter(self.pairs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Swapped)
    with pytest.raises(EvaluationError, match=r"RuntimeError: prefetch out of order: got image #1, expected #0\."):
        run(ds, tmp_path, num_workers=1)


# ---------------------------------------------------------------------------------------------- the loop
def test_progress_bar_counts_every_image_once(tmp_path, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.n, self.closed = kwargs, 0, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed += 1

    monkeypatch.setattr(evaluate_mod, "tqdm", Bar)
    ds = Items(n=3, names=True)
    save_confusions(partial_path(tmp_path, "k"), ["n1"], [reference_cm(ds.items[1])], C)
    run(ds, tmp_path, resume=True)
    assert bars[0].kwargs == {"total": 3, "desc": "eval k", "disable": True, "leave": False}
    assert bars[0].n == 3 and bars[0].closed == 1
    named_later = Items(n=3)  # the finished image is recognised only after loading it
    save_confusions(partial_path(tmp_path / "b", "k"), ["n2"], [reference_cm(ds.items[2])], C)
    run(named_later, tmp_path / "b", resume=True, progress=True)
    assert bars[1].kwargs["disable"] is False and bars[1].n == 3 and bars[1].closed == 1
    with pytest.raises(EvaluationError):
        evaluate_split(lambda x: 1 / 0, ds, WHOLE, key="z", num_classes=C, out_dir=tmp_path, progress=False)
    assert bars[2].closed == 1


def test_empty_split_and_one_row_labels(tmp_path):
    res = run(Items(n=0), tmp_path / "e")
    assert res.num_images == 0 and res.confusion.shape == (C, C) and res.confusion.sum() == 0
    assert load_confusions(res.per_image_path)[1].shape == (0, C, C)
    flat = Items(n=2, h=1, w=5, label_hw=(1, 9))  # a label of one row is [H, W], not a channel-first [1, W]
    res = run(flat, tmp_path / "f")
    np.testing.assert_array_equal(res.confusion, sum(reference_cm(it) for it in flat.items))
    assert 0 <= res.seconds < 60


def test_dataset_names_only_when_they_match_the_items(tmp_path):
    """A ``names`` sequence of the right length lets resume skip loading; a wrong length, a method, a number or
    None are ignored (every item is loaded)."""
    class Named(Items):
        def __init__(self, names, **kwargs):
            super().__init__(**kwargs)
            self.names, self.loaded = names, []

        def __getitem__(self, i):
            self.loaded.append(i)
            return super().__getitem__(i)

    for names, loaded in ((("n0", "n1"), [1]), (["n0"], [0, 1]), (lambda: ["n0", "n1"], [0, 1]), (3, [0, 1]),
                          (None, [0, 1])):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        save_confusions(partial_path(out, "k"), ["n0"], [np.zeros((C, C), np.int64)], C)
        ds = Named(names, n=2)
        run(ds, out, resume=True)
        assert ds.loaded == loaded, names


def test_evaluate_split_names_the_failing_image_from_the_dataset_names(tmp_path):
    class Broken(Items):
        def __getitem__(self, i):
            raise OSError("unreadable")

    with pytest.raises(EvaluationError, match=r"failed on image #0 \('n0'\): OSError: unreadable\. 0 finished"):
        run(Broken(n=2, names=True), tmp_path)


# ---------------------------------------------------------------------------------------------- inference
def test_argmax_beyond_256_classes():
    """More than 256 classes do not fit the uint8 running index: class 256 must still win."""
    for num_classes in (257, 300):
        logits = torch.zeros(1, num_classes, 2, 2)
        logits[0, 256] = 5.0
        logits[0, num_classes - 1, 0, 0] = 9.0
        got = resized_argmax(logits, (3, 3))
        expected = F.interpolate(logits, size=(3, 3), mode="bilinear", align_corners=False).argmax(1)
        assert torch.equal(got, expected) and int(got.max()) == num_classes - 1 and 256 in got.tolist()[0][2]
    with pytest.raises(ValueError, match=r"^resized_argmax: no classes in logits of shape \(1, 0, 2, 2\)$"):
        resized_argmax(torch.zeros(1, 0, 2, 2), (3, 3))


def test_tiny_scales_keep_one_pixel_and_round_half_up():
    shapes = []

    def predict(x):
        shapes.append(tuple(x.shape[-2:]))
        return linear_predict(x)

    image = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(1)) * 255
    spec = InferenceSpec(mode="whole", crop_size=None, stride=None, scales=(0.01, 0.75, 1.25))
    out = infer_logits(predict, image, spec, C)
    assert shapes == [(1, 1), (15, 21), (25, 35)]  # 0.2 -> 1 (at least one pixel); 15.0, 21.0; 25.0, 35.0
    passes = [F.interpolate(linear_predict(F.interpolate(image, size=s, mode="bilinear", align_corners=False)),
                            size=(20, 28), mode="bilinear", align_corners=False) for s in shapes]
    torch.testing.assert_close(out, sum(passes) / 3)


def test_messages_in_full():
    with pytest.raises(ValueError, match=r"^slide_windows: sizes must be positive, got h=0 w=5 crop=\(4, 4\) "
                                         r"stride=\(2, 2\)$"):
        slide_windows(0, 5, (4, 4), (2, 2))
    with pytest.raises(TypeError, match=r"^expected a callable predict_fn or an object with a \.predict method, "
                                        r"got int$"):
        infer_logits(3, torch.zeros(1, 3, 4, 4), WHOLE, C)
    with pytest.raises(ValueError, match=r"^infer_logits: expected images of shape \[B,3,H,W\], got \(3, 4, 4\)$"):
        infer_logits(linear_predict, torch.zeros(3, 4, 4), WHOLE, C)
    with pytest.raises(ValueError, match=r"^predict_fn returned list, expected scores of shape \(1, 3, 4, 4\) "
                                         r"\(B, C, h, w\)$"):
        infer_logits(lambda x: [x], torch.zeros(1, 3, 4, 4), WHOLE, C)
    # an object whose .predict is not callable but which is itself callable
    class Callable:
        predict = None

        def __call__(self, x):
            return linear_predict(x)

    torch.testing.assert_close(infer_logits(Callable(), torch.ones(1, 3, 4, 4), WHOLE, C),
                               linear_predict(torch.ones(1, 3, 4, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert infer_logits(linear_predict, torch.ones(1, 3, 4, 4) * 2, WHOLE, C).dtype == torch.float32


# ---------------------------------------------------------------------------------------------- after the first run
def test_windows_of_one_pixel_are_valid():
    # h 1, crop (1, 2), stride 1: one row; columns ceil((3 - 2) / 1) + 1 = 2
    assert slide_windows(1, 3, (1, 2), (1, 1)) == [(0, 1, 0, 2), (0, 1, 1, 3)]


def test_slide_scores_are_float32_for_a_float64_image():
    image = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 255
    spec = InferenceSpec(mode="slide", crop_size=(4, 4), stride=(3, 3))
    out = infer_logits(lambda x: linear_predict(x.float()).double(), image, spec, C)
    assert out.dtype == torch.float32


def test_scale_two_is_resized():
    shapes = []
    image = torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(3)) * 255
    spec = InferenceSpec(mode="whole", crop_size=None, stride=None, scales=(2.0,))
    infer_logits(lambda x: shapes.append(tuple(x.shape[-2:])) or linear_predict(x), image, spec, C)
    assert shapes == [(10, 12)]


def test_empty_saves_have_their_dtypes_on_disk(tmp_path):
    res = run(Items(n=0), tmp_path)
    assert res.confusion.dtype == np.int64
    with np.load(save_confusions(tmp_path / "e.npz", [], [], 2)) as z:
        assert z["confusion"].dtype == np.int64 and z["names"].dtype.kind == "U" and z["names"].shape == (0,)


def test_failed_write_whose_temporary_file_is_already_gone(tmp_path, monkeypatch):
    target = tmp_path / "c.npz"

    def vanishing_savez(f, **arrays):
        for p in tmp_path.glob(".c.npz.*.tmp"):
            p.unlink()
        raise OSError("device gone")

    monkeypatch.setattr(np, "savez", vanishing_savez)
    with pytest.raises(OSError, match="device gone"):  # the write's error, not the cleanup's
        save_confusions(target, ["a"], np.zeros((1, 2, 2), np.int64), 2)


def test_autocast_dtype_is_the_one_asked_for(tmp_path):
    seen = []

    def predict(x):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return linear_predict(x)

    evaluate_split(predict, Items(n=1), WHOLE, key="k", num_classes=C, out_dir=tmp_path, progress=False,
                   autocast_dtype=torch.float16)
    assert seen == [torch.float16]


def test_prefetching_loader_settings(tmp_path, monkeypatch):
    """In order, two images ahead per worker, items passed through as they are, pinned only for CUDA."""
    settings = []

    class Stop(Exception):
        pass

    def recording_loader(dataset, **kwargs):
        settings.append(kwargs)
        raise Stop

    monkeypatch.setattr(torch.utils.data, "DataLoader", recording_loader)
    for device in ("cpu", "cuda"):
        with pytest.raises(Stop):
            run(Items(n=2), tmp_path, num_workers=3, device=device)
    assert settings[0] == {"batch_size": None, "num_workers": 3, "collate_fn": evaluate_mod._identity,
                           "pin_memory": False, "prefetch_factor": 2}
    assert settings[1]["pin_memory"] is True


def test_images_and_labels_go_to_the_device(tmp_path, monkeypatch):
    """On the ``meta`` device (no data): the model and the confusion get tensors on the requested device."""
    devices = []

    def predict(x):
        devices.append(("image", x.device.type))
        return torch.zeros(x.shape[0], C, *x.shape[-2:], device=x.device)

    def confusion(pred, label, num_classes, ignore_index):
        devices.append(("pred", pred.device.type))
        devices.append(("label", label.device.type))
        return np.zeros((num_classes, num_classes), np.int64)

    monkeypatch.setattr(evaluate_mod, "confusion_matrix", confusion)
    evaluate_split(predict, Items(n=1), WHOLE, key="k", num_classes=C, out_dir=tmp_path, progress=False,
                   device="meta")
    assert devices == [("image", "meta"), ("pred", "meta"), ("label", "meta")]


def test_window_batches_reach_the_model(tmp_path):
    calls = []
    spec = InferenceSpec(mode="slide", crop_size=(4, 4), stride=(3, 3))  # 6 x 7: 2 x 2 windows
    evaluate_split(lambda x: calls.append(x.shape[0]) or linear_predict(x), Items(n=1), spec, key="k",
                   num_classes=C, out_dir=tmp_path, progress=False, batch_windows=3)
    assert calls == [3, 1]
