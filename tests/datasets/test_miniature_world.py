"""The pretraining world of the miniature benchmark: deterministic, wider than the benchmark's domains, exact
signals and captions."""

import json

import numpy as np

from datasets.labels import CITYSCAPES_CLASSES
from datasets.miniature import ELEMENT_TRAIN_ID, STYLES
from datasets.miniature.__main__ import main as miniature_main
from datasets.miniature.world import caption_for, render_world_scene, world_style


def test_world_scenes_are_deterministic_and_distinct():
    a, b, c = render_world_scene(0, 5), render_world_scene(0, 5), render_world_scene(0, 6)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth) and a.caption == b.caption
    assert a.caption != c.caption or a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.uint8 and a.image.shape[:2] == a.elements.shape == a.depth.shape
    assert np.array_equal(a.classes, ELEMENT_TRAIN_ID[a.elements])
    assert a.depth.min() > 0 and a.depth.max() == 1000.0  # metres; the sky is at 1000


def test_caption_lists_the_large_classes_largest_first():
    road, car, sky, pole = (CITYSCAPES_CLASSES.index(n) for n in ("road", "car", "sky", "pole"))
    classes = np.full((10, 100), road, np.uint8)
    classes[:, :30] = car
    classes[:, 30:40] = sky
    classes[0, 40] = pole  # 0.1 %: below the 2 % share
    classes[1, 40:45] = 255  # void never named
    assert caption_for(classes) == "a photo of a road, a car and a sky."
    assert caption_for(np.full((4, 4), 255, np.uint8)) == "a photo of a street."


def test_world_styles_reach_beyond_every_benchmark_domain():
    styles = [world_style(np.random.default_rng(i)) for i in range(200)]
    bench_hue = max(abs(h) for s in STYLES.values() for h in s.hue_shift)
    bench_sat = (min(s.saturation[0] for s in STYLES.values()), max(s.saturation[1] for s in STYLES.values()))
    assert max(abs(s.hue_shift[0]) for s in styles) > 2 * bench_hue
    assert min(s.saturation[0] for s in styles) < bench_sat[0] and max(s.saturation[1] for s in styles) > bench_sat[1]
    assert max(s.palette_jitter for s in styles) > 2 * max(s.palette_jitter for s in STYLES.values())


def test_world_command_writes_images_signals_and_captions(tmp_path, capsys):
    assert miniature_main(["world", "--out", str(tmp_path), "-n", "2"]) == 0
    captions = json.loads((tmp_path / "captions.json").read_text())
    assert sorted(captions) == ["0000.png", "0001.png"]
    assert captions["0000.png"] == render_world_scene(0, 0).caption
    assert (tmp_path / "0001_depth.png").is_file() and (tmp_path / "0001_classes.png").is_file()
