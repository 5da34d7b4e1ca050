"""Every method learns on the miniature benchmark with its miniature recipe and the shipped stand-ins, and
learns clearly more with them than from a random init (``--random-init``), on the targets and on the source.

History these tests guard against:
- Before the miniature recipe of the Rein family ran 480 iterations (it ran 160), Rein, SET and Vireo stayed at
  chance (2.9 mean target mIoU) and no test noticed: Rein's queries are read off its per-layer tokens
  (``link_to_query``), which start at ~1e-2, so all queries start alike and take a few hundred iterations to
  tell apart.
- Before the miniature head of the frozen backbones lost its pixel-decoder encoder layers
  (``methods.vit_m2f.miniature_head``), frozen_m2f scored alike on the DINOv2 stand-in and on a random ViT
  (full benchmark, seed 0: 15.66 vs 15.30): the head learnt the simple scenes from raw patches.
- Before the invariance term of the pretraining, the stand-ins' features carried the source's colours.
"""

import json
from typing import NamedTuple

import pytest

from methods.registry import get_method_class, list_methods
from runners.run import main as run_main

# Measured on the quarter-size root with this file's command (torch 2.14.1, one thread as under ``pytest -n 2``,
# seed 0): mean target mIoU and GTA5 val mIoU with the shipped stand-ins and with --random-init. Each margin asked
# for is about half the measured gap or less; chance is ~3 (road and sky half right, every other class 0). The
# 3-seed table of the full benchmark is in the README ("What the miniature benchmark shows").
class StandinGain(NamedTuple):
    left_out: str  # the stand-ins that --random-init leaves out, as its banner names them
    target: tuple[float, float, float]  # mean target mIoU: with stand-ins, at random init, margin asked for
    source: tuple[float, float, float]  # GTA5 val mIoU: with stand-ins, at random init, margin asked for
    minutes: float  # CPU minutes of the two runs on one thread, so that the longest start first (tests/conftest.py)


STANDIN_GAINS = {
    "tqdm": StandinGain("EVA02_CLIP_tiny.pt", (15.71, 12.04, 1.5), (22.90, 20.12, 1.0), 2.4),
    "rein": StandinGain("dinov2_tiny_pretrain.pth", (12.97, 7.33, 3.0), (18.24, 13.79, 2.0), 4.5),
    "set": StandinGain("dinov2_tiny_pretrain.pth", (12.80, 7.30, 3.0), (17.49, 14.05, 1.5), 5.3),
    "vireo": StandinGain("dinov2_tiny_pretrain.pth, depth_anything_v2_tiny.pth, CLIP_RN_tiny.pt",
                         (13.25, 6.96, 3.0), (18.43, 9.44, 4.0), 16.5),
    "vltseg": StandinGain("EVA02_CLIP_tiny.pt", (10.49, 7.03, 1.5), (16.16, 10.67, 2.5), 2.4),
    "frozen_m2f": StandinGain("dinov2_tiny_pretrain.pth", (13.91, 8.76, 3.0), (21.43, 15.62, 3.0), 2.8),
    # FAMix's stand-in shows on the source more than on the targets here (+2.4 on the targets over 3 seeds of the
    # full benchmark): the targets are only asked to be above the random init
    "famix": StandinGain("CLIP_RN_tiny.pt", (10.08, 8.89, 0.0), (16.70, 11.78, 2.5), 2.6),
}


def _run_record(tmp_path, mini_root, method: str, *extra: str) -> dict:
    out = tmp_path / (method + "".join(extra))
    code = run_main(["--method", method, "--protocol", "gta2cbm", "--data-root", str(mini_root), "--out", str(out),
                     "--no-progress", "--logger", "none", *extra])
    assert code == 0
    return json.loads((out / "result.json").read_text())


def test_the_table_covers_every_registered_method():
    assert sorted(STANDIN_GAINS) == sorted(list_methods())


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow(minutes=gain.minutes))
                                    for m, gain in STANDIN_GAINS.items()])
def test_each_method_learns_more_from_its_standins_than_from_a_random_init(tmp_path, mini_root, capsys, method):
    left_out, target, source, _ = STANDIN_GAINS[method]
    pretrained = _run_record(tmp_path, mini_root, method)
    capsys.readouterr()
    random = _run_record(tmp_path, mini_root, method, "--random-init")
    banner = [line for line in capsys.readouterr().out.splitlines() if "NOT PRETRAINED" in line]
    assert banner == [f"!! NOT PRETRAINED: --random-init, {left_out} not loaded"], banner
    assert pretrained["pretrained"] is True and random["pretrained"] is False
    iterations = get_method_class(method).recipe(scale="miniature").iterations
    assert pretrained["train"]["iterations"] == random["train"]["iterations"] == iterations
    a, b = pretrained["results"], random["results"]
    assert a["mean_miou"] > b["mean_miou"] + target[2], (method, a["mean_miou"], b["mean_miou"], "measured", target)
    assert a["reference"]["miou"] > b["reference"]["miou"] + source[2], (
        method, a["reference"]["miou"], b["reference"]["miou"], "measured", source)
    assert a["mean_miou"] > 8.0, (method, a["mean_miou"])
