"""benchmarks.predictions: gallery images saved as Cityscapes-palette PNGs, and evaluate_split saving them."""

import numpy as np
import torch
from PIL import Image

from benchmarks.evaluate import evaluate_split
from benchmarks.predictions import MAX_SIDE, prediction_files, read_palette_png, save_gallery_item
from benchmarks.protocols import InferenceSpec

# Cityscapes colours written out (cityscapesScripts labels.py): road, sidewalk, ..., bicycle
ROAD, SKY, BICYCLE = (128, 64, 128), (70, 130, 180), (119, 11, 32)


def test_palette_png_holds_train_ids_with_cityscapes_colours(tmp_path):
    label = torch.full((6, 8), 255, dtype=torch.long)
    label[:3] = 10
    pred = torch.zeros(6, 8, dtype=torch.long)
    pred[:2] = 10
    pred[:, -1] = 18
    image = torch.arange(3 * 6 * 8, dtype=torch.float32).reshape(3, 6, 8) % 256
    files = save_gallery_item(tmp_path, "berlin/berlin_000000_000019", image, label, pred)
    assert files == prediction_files(tmp_path, "berlin/berlin_000000_000019")
    assert files["pred"].name == "berlin__berlin_000000_000019.pred.png"
    np.testing.assert_array_equal(read_palette_png(files["pred"]), pred.numpy())
    np.testing.assert_array_equal(read_palette_png(files["gt"]), label.numpy())
    rgb = np.asarray(Image.open(files["pred"]).convert("RGB"))
    assert tuple(rgb[0, 0]) == SKY and tuple(rgb[5, 0]) == ROAD and tuple(rgb[5, 7]) == BICYCLE
    assert tuple(np.asarray(Image.open(files["gt"]).convert("RGB"))[5, 0]) == (0, 0, 0)  # ignored: black
    assert Image.open(files["image"]).size == (8, 6)


def test_large_images_are_capped_nearest(tmp_path):
    label = torch.zeros(1500, 3000, dtype=torch.long)
    label[:, 1500:] = 13
    files = save_gallery_item(tmp_path, "x", torch.zeros(3, 750, 1500), label, label)
    pred = read_palette_png(files["pred"])
    assert pred.shape == (MAX_SIDE // 2, MAX_SIDE) and set(np.unique(pred)) == {0, 13}


def test_evaluate_split_saves_only_the_gallery_images(tmp_path):
    items = [{"image": torch.full((3, 16, 24), float(i)), "label": torch.full((16, 24), i % 19, dtype=torch.long),
              "name": f"img{i}"} for i in range(5)]

    def predict(images):  # class = image value (so the prediction of image i is class i)
        return torch.nn.functional.one_hot(images[:, 0].long() % 19, 19).permute(0, 3, 1, 2).float()

    ev = evaluate_split(predict, items, InferenceSpec("whole", None, None), key="k", out_dir=tmp_path / "eval",
                        progress=False, gallery=["img3", "img1"], gallery_dir=tmp_path / "pred")
    assert ev.score.miou == 100.0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "img1.gt.png", "img1.jpg", "img1.pred.png", "img3.gt.png", "img3.jpg", "img3.pred.png"]
    assert (read_palette_png(tmp_path / "pred" / "img3.pred.png") == 3).all()
