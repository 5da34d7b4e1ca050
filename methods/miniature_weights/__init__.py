"""The miniature foundation models: tiny stand-ins of the official pretrained files, shipped with the package.

On the built-in miniature benchmark the methods build CPU-sized backbones (``dinov2_tiny``, ``eva02_tiny``, the
``tiny`` CLIP ResNet and text tower). This package ships pretrained weights for them, trained on the miniature
*pretraining world* (``datasets.miniature.world``, never the benchmark's images or labels) by
``python -m methods.miniature_weights pretrain`` (deterministic, CPU, ``pretrain.py``), and written in the
same file formats as the official releases, so the official loaders read them unchanged:

=============================  =================================  ==========================  =====================
file (``files/``)              stands in for                      layout                      used by
=============================  =================================  ==========================  =====================
``dinov2_tiny_pretrain.pth``   ``dinov2_vitl14_pretrain.pth``     DINOv2 (patch 14)           rein, set, vireo,
                                                                                              frozen_m2f
``depth_anything_v2_tiny.pth`` ``depth_anything_v2_vitl.pth``     ``pretrained.*`` +          vireo
                                                                  ``depth_head.*``
``EVA02_CLIP_tiny.pt``         ``EVA02_CLIP_L_336_psz14_s6B.pt``  EVA-CLIP ``visual.*`` +     tqdm, vltseg
                               / ``EVA02_CLIP_L_psz14_s4B.pt``    ``text.*`` (fp16)
``CLIP_RN_tiny.pt``            ``RN101.pt`` / ``RN50.pt`` (and    OpenAI CLIP ``visual.*`` +  famix, vireo (text)
                               Vireo's ``ViT-L-14-336px.pt``      top-level text (fp16)
                               text tower)
=============================  =================================  ==========================  =====================

``files/SHA256SUMS`` lists each file's sha256 (``sha256sum`` format); :func:`miniature_weights_dir` checks
the shipped files against it before a run uses them, and the result record keeps names and digests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from methods.weights import sha256_file

MINIATURE_WEIGHTS_DIR = Path(__file__).resolve().parent / "files"
SHA256SUMS = "SHA256SUMS"


@dataclass(frozen=True)
class MiniatureWeights:
    """One shipped stand-in: its file name, the official file(s) it stands in for, its layout and users."""

    file: str
    stands_in_for: tuple[str, ...]
    layout: str
    used_by: tuple[str, ...]
    objective: str


MINIATURE_WEIGHTS: dict[str, MiniatureWeights] = {
    w.file: w
    for w in (
        MiniatureWeights("dinov2_tiny_pretrain.pth", ("dinov2_vitl14_pretrain.pth",), "dinov2",
                         ("rein", "set", "vireo", "frozen_m2f"),
                         "masked patch prediction of the world's element classes and depth, from every tap"),
        MiniatureWeights("depth_anything_v2_tiny.pth", ("depth_anything_v2_vitl.pth",), "depth_anything_v2",
                         ("vireo",), "relative depth regression, initialised from the DINOv2 stand-in"),
        MiniatureWeights("EVA02_CLIP_tiny.pt", ("EVA02_CLIP_L_336_psz14_s6B.pt", "EVA02_CLIP_L_psz14_s4B.pt"),
                         "eva_clip", ("tqdm", "vltseg"),
                         "image-caption contrastive on crops + dense patch-to-class-name alignment"),
        MiniatureWeights("CLIP_RN_tiny.pt", ("RN101.pt", "RN50.pt", "ViT-L-14-336px.pt"), "openai_clip",
                         ("famix", "vireo"),
                         "image-caption contrastive on crops + dense (attention-pool values) class-name alignment"),
    )
}


class MiniatureWeightsError(RuntimeError):
    """A shipped miniature weights file is missing or does not match ``SHA256SUMS``."""


def read_sha256sums(folder: Path = MINIATURE_WEIGHTS_DIR) -> dict[str, str]:
    """``{file: sha256}`` from ``folder/SHA256SUMS`` (empty when the file does not exist)."""
    path = folder / SHA256SUMS
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    return sums


def miniature_weights_dir(folder: Path = MINIATURE_WEIGHTS_DIR, *, verify: bool = True) -> Path:
    """The folder of the shipped stand-ins; with ``verify`` every file listed in :data:`MINIATURE_WEIGHTS` must
    exist and match ``SHA256SUMS`` (else :class:`MiniatureWeightsError`, naming the regeneration command)."""
    if verify:
        sums = read_sha256sums(folder)
        for name in MINIATURE_WEIGHTS:
            path = folder / name
            if name not in sums or not path.is_file() or sha256_file(path) != sums[name]:
                raise MiniatureWeightsError(
                    f"miniature weights file {path} is missing or does not match {folder / SHA256SUMS}; "
                    f"regenerate with: python -m methods.miniature_weights pretrain")
    return folder


def miniature_weights_sha256(folder: Path = MINIATURE_WEIGHTS_DIR) -> dict[str, str]:
    """``{file: sha256}`` of the shipped stand-ins (from ``SHA256SUMS``)."""
    return {k: v for k, v in read_sha256sums(folder).items() if k in MINIATURE_WEIGHTS}
