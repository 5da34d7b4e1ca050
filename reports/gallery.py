"""Paper-style qualitative figures: ``python -m reports.gallery RUN... [--out DIR] [--tile-width PX]``.

For every protocol hash among the runs and every target domain, one PNG grid: a row per gallery image
(the protocol's seeded pick, :class:`benchmarks.protocols.GallerySpec`, so every run saved the same images),
columns *image | ground truth | one column per run*, a header naming each run with its mIoU on that target,
and the Cityscapes colour legend underneath. Runs of different protocol hashes never share a figure.
Files: ``<out>/gallery_<protocol>_<variant>_<hash8>_<target>.png`` (the HTML leaderboard links them).

A RUN is a run folder (with ``result.json``), a ``result.json`` file, or a folder searched for runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from benchmarks.predictions import prediction_files, read_palette_png
from datasets.labels import CITYSCAPES_CLASSES, TRAIN_ID_PALETTE
from reports.reported import dataset_display
from runners.records import RECORD_FILE, load_records

__all__ = ["GalleryRun", "GalleryFigure", "load_runs", "run_label", "gallery_figures", "compose",
           "gallery_filename", "write_galleries", "runs_from_cli", "main"]

GAP = 4
HEADER = 46
MISSING_GREY = (200, 200, 200)


@dataclass
class GalleryRun:
    """One run's record and folder."""

    record: dict[str, Any]
    folder: Path

    @property
    def run_id(self) -> str:
        return str(self.record.get("run_id") or self.folder.name)

    def target(self, key: str) -> dict[str, Any]:
        return self.record["results"]["targets"].get(key, {})

    def gallery(self, key: str) -> tuple[Path, list[str]]:
        """(folder of the saved files, image names) of target ``key``; no names when none were saved."""
        g = self.target(key).get("gallery") or {}
        return self.folder / g.get("dir", f"predictions/{key}"), list(g.get("images", []))


@dataclass
class GalleryFigure:
    """What one grid shows: the runs (columns) and image names (rows) of one protocol hash and target."""

    protocol: str
    variant: str
    protocol_hash: str
    target: str
    miniature: bool
    runs: list[GalleryRun]
    images: list[str]
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)  # set by compose


def load_runs(paths: Sequence[Path | str]) -> list[GalleryRun]:
    """The runs named on the command line, in order (folders are searched recursively)."""
    runs: list[GalleryRun] = []
    for p in map(Path, paths):
        record_path = p if p.is_file() else p / RECORD_FILE
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            runs.append(GalleryRun(record, record_path.parent))
        elif p.is_dir():
            runs += [GalleryRun(r, Path(r["_path"]).parent) for r in load_records(p)]
        else:
            raise FileNotFoundError(f"{p}: no such run folder or result.json (pass the --out folder of runners.run)")
    return runs


def runs_from_cli(paths: Sequence[str]) -> list[GalleryRun] | None:
    """:func:`load_runs` for a command line: a missing path is a one-line error (None)."""
    try:
        return load_runs(paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def run_label(record: dict[str, Any]) -> str:
    """"rein (dinov2_vitl14) s0" (+ "random init" when not pretrained)."""
    label = f"{record['method']} ({record['backbone']}) s{record['seed']}"
    return label + (" random init" if record.get("pretrained") is False else "")


def gallery_figures(runs: Sequence[GalleryRun]) -> list[GalleryFigure]:
    """One figure per (protocol hash, target), targets in protocol order, runs in the given order."""
    groups: dict[str, list[GalleryRun]] = {}
    for r in runs:
        groups.setdefault(r.record["protocol_hash"], []).append(r)
    figures = []
    for phash, members in groups.items():
        rec = members[0].record
        keys = list(dict.fromkeys(k for m in members for k in m.record["results"]["targets"]))
        for key in keys:
            images = list(dict.fromkeys(n for m in members for n in m.gallery(key)[1]))
            if images:
                figures.append(GalleryFigure(rec["protocol"], rec.get("eval_variant", "default"), phash, key,
                                             bool(rec.get("miniature")), list(members), images))
    return figures


def gallery_filename(protocol: str, variant: str, protocol_hash: str, target: str) -> str:
    return f"gallery_{protocol}_{variant}_{protocol_hash[:8]}_{target}.png"


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _colourise(ids: np.ndarray) -> Image.Image:
    return Image.fromarray(TRAIN_ID_PALETTE[ids])


def _tile(path: Path, size: tuple[int, int], *, label: bool) -> Image.Image | None:
    if not path.is_file():
        return None
    if label:
        return _colourise(read_palette_png(path)).resize(size, Image.Resampling.NEAREST)
    with Image.open(path) as img:
        return img.convert("RGB").resize(size, Image.Resampling.BICUBIC)


def _missing(size: tuple[int, int], text: str) -> Image.Image:
    tile = Image.new("RGB", size, MISSING_GREY)
    ImageDraw.Draw(tile).text((8, size[1] // 2 - 8), text, fill=(60, 60, 60), font=_font(13))
    return tile


def _legend(width: int) -> Image.Image:
    font, sw, pad = _font(13), 14, 6
    items = []
    for c, name in enumerate(CITYSCAPES_CLASSES):
        items.append((tuple(int(v) for v in TRAIN_ID_PALETTE[c]), name, sw + 4 + int(font.getlength(name)) + 14))
    rows, row, used = [], [], 0
    for item in items:
        if row and used + item[2] > width - 2 * pad:
            rows.append(row)
            row, used = [], 0
        row.append(item)
        used += item[2]
    rows.append(row)
    legend = Image.new("RGB", (width, pad + len(rows) * (sw + 6) + pad), "white")
    draw = ImageDraw.Draw(legend)
    for i, r in enumerate(rows):
        x, y = pad, pad + i * (sw + 6)
        for colour, name, w in r:
            draw.rectangle([x, y, x + sw - 1, y + sw - 1], fill=colour, outline=(0, 0, 0))
            draw.text((x + sw + 4, y), name, fill=(0, 0, 0), font=font)
            x += w
    return legend


def compose(fig: GalleryFigure, *, tile_width: int = 320) -> Image.Image:
    """The grid of ``fig``; ``fig.boxes[(row, column)]`` gets each tile's (x0, y0, x1, y1)."""
    ncols = 2 + len(fig.runs)
    heights = []
    for name in fig.images:  # each row takes the aspect ratio of its ground truth (any run that saved it)
        shape = None
        for r in fig.runs:
            gt = prediction_files(r.gallery(fig.target)[0], name)["gt"]
            if gt.is_file():
                with Image.open(gt) as img:
                    shape = img.size
                break
        w, h = shape or (2, 1)
        heights.append(max(1, round(tile_width * h / w)))
    width = ncols * tile_width + (ncols + 1) * GAP
    bench = "MINIATURE benchmark" if fig.miniature else "real data"
    title = f"{dataset_display(fig.target)} | {fig.protocol} [{fig.variant}] {fig.protocol_hash} ({bench})"
    grid_h = HEADER + 22 + sum(heights) + GAP * (len(heights) + 1)
    legend = _legend(width)
    canvas = Image.new("RGB", (width, grid_h + legend.height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, 4), title, fill=(0, 0, 0), font=_font(15))
    headers = [("image", ""), ("ground truth", "")]
    for r in fig.runs:
        miou = r.target(fig.target).get("miou")
        headers.append((run_label(r.record), "" if miou is None else f"mIoU {miou:.2f}"))
    for j, (line1, line2) in enumerate(headers):
        x = GAP + j * (tile_width + GAP)
        font = _font(13)
        while font.getlength(line1) > tile_width and font.size > 8:
            font = _font(font.size - 1)
        draw.text((x, 26), line1, fill=(0, 0, 0), font=font)
        draw.text((x, 26 + 17), line2, fill=(70, 70, 70), font=_font(12))
    y = HEADER + 22
    for i, (name, h) in enumerate(zip(fig.images, heights)):
        size = (tile_width, h)
        sources = [prediction_files(r.gallery(fig.target)[0], name) for r in fig.runs]
        first = next((s for s in sources if s["gt"].is_file()), sources[0])
        tiles = [_tile(first["image"], size, label=False), _tile(first["gt"], size, label=True)]
        tiles += [_tile(s["pred"], size, label=True) for s in sources]
        for j, tile in enumerate(tiles):
            x = GAP + j * (tile_width + GAP)
            canvas.paste(tile if tile is not None else _missing(size, "not saved"), (x, y))
            fig.boxes[(i, j)] = (x, y, x + tile_width, y + h)
        font = _font(11)
        tw = int(font.getlength(name)) + 6
        draw.rectangle([GAP, y + h - 16, GAP + tw, y + h - 1], fill=(0, 0, 0))
        draw.text((GAP + 3, y + h - 15), name, fill=(255, 255, 255), font=font)
        y += h + GAP
    canvas.paste(legend, (0, grid_h))
    return canvas


def write_galleries(runs: Sequence[GalleryRun], out_dir: Path | str, *, tile_width: int = 320) -> list[Path]:
    """Every figure of ``runs`` as PNG under ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig in gallery_figures(runs):
        path = out_dir / gallery_filename(fig.protocol, fig.variant, fig.protocol_hash, fig.target)
        compose(fig, tile_width=tile_width).save(path, optimize=True)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.gallery", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (or result.json files, or folders of runs)")
    parser.add_argument("--out", default="outputs/report/gallery", help="output folder (default: %(default)s)")
    parser.add_argument("--tile-width", type=int, default=320, help="width of one tile in px (default: %(default)s)")
    args = parser.parse_args(argv)
    runs = runs_from_cli(args.runs)
    if runs is None:
        return 2
    paths = write_galleries(runs, args.out, tile_width=args.tile_width)
    if not paths:
        print("error: none of these runs saved gallery predictions (runs from before the gallery existed? evaluate "
              "again into a new folder: python -m runners.run ... --eval-only --checkpoint RUN/model_final.pt --out NEW)",
              file=sys.stderr)
        return 2
    for p in paths:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
