"""The checkpoints the official repositories released (and VLTSeg's public re-implementation), as data.

Re-evaluating a released checkpoint is the cheapest real reproduction: minutes on one GPU instead of a
day of training. :data:`RELEASED_CHECKPOINTS` lists every released file that the sources name, with

- ``file``: the name as published, and ``path``: where it goes under the weights folder. Several releases
  publish the same name (Rein's GitHub releases are all ``iter_40000_published.pth``), so released files
  sit in ``<method>/<release>/<file>`` below ``--weights-dir`` (official backbone files stay at the top);
- ``url``: where it is published, as the README / release page / issue states it;
- ``size`` / ``sha256``: as published; no source publishes them for these files (``None``), so
  ``runners.released list`` prints the local digest for the user to keep;
- ``needs``: the official backbone files the harness loads before the checkpoint (Rein's releases hold
  only the tokens and the head: the frozen DINOv2 comes from ``dinov2_vitl14_pretrain.pth``);
- ``evaluations``: (harness protocol, the evaluation variant its repository uses) per protocol its source
  reports; a variant of ``None`` means the harness has no paper-faithful variant there, so only the
  harmonised evaluation runs;
- ``reported_lines``: the lines of ``reports/reported.csv`` (1-based, header = line 1) this file should
  reproduce, the number the release names first; note transcriptions of those lines count too;
- ``facts``: where each fact comes from (repository + file, or issue URL).

``backbone=None`` marks releases whose backbone the harness does not build (listed, never evaluated).
:data:`NO_RELEASE` says, with the source, which methods released no checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "NO_RELEASE",
    "RELEASED_CHECKPOINTS",
    "ReleasedCheckpoint",
    "get_released",
    "released_for_method",
]

REIN_README = "w1oves/Rein readme.md (train branch), tables 'Performance Under Various Settings' / 'Various Backbones'"
REIN_RELEASES = "https://github.com/w1oves/Rein/releases/download"
TQDM_README = "ByeongHyunPak/tqdm README.md, section 'Checkpoints'"
FAMIX_README = "astra-vision/FAMix README.md, section 'Trained models' (a Google Drive folder)"
FAMIX_FOLDER = "https://drive.google.com/drive/folders/1GzajnYyDCUL7Xl0zjjU7_n73ucuyU5SS"
VLTSEG_README = "VLTSeg/VLTSeg README.md, section 'Checkpoints' (Zenodo record 14766160)"
ZENODO = "https://zenodo.org/records/14766160/files"


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One released checkpoint file and the published numbers it should reproduce."""

    id: str
    method: str  # harness method name
    backbone: str | None  # harness backbone name; None: a backbone the harness does not build
    source: str  # training data as the release names it ("gta5", "cityscapes", "gta5+synthia", ...)
    file: str  # file name as published
    release: str  # the release tag / folder it is published under (the subfolder in the weights folder)
    url: str
    needs: tuple[str, ...]  # official backbone files the harness loads first
    evaluations: tuple[tuple[str, str | None], ...]  # (protocol, released-profile variant or None)
    reported_lines: tuple[int, ...]
    facts: tuple[str, ...]
    size: int | None = None  # bytes, as published
    sha256: str | None = None  # as published
    name_confirmed: bool = True  # False: the published name is inferred (see ``note``)
    note: str = ""

    @property
    def path(self) -> str:
        """Location below the weights folder: ``<method>/<release>/<file>`` (a "/" in the release tag -> "-")."""
        return f"{self.method}/{self.release.replace('/', '-')}/{self.file}"

    def locate(self, weights_dir: Path | str | None) -> Path | None:
        """The file in ``weights_dir`` (at :attr:`path`), or None."""
        if weights_dir is None:
            return None
        p = Path(weights_dir).expanduser() / self.path
        return p if p.is_file() else None

    @property
    def evaluable(self) -> bool:
        return self.backbone is not None and bool(self.evaluations)

    def why_not_evaluable(self) -> str:
        if self.backbone is None:
            return "backbone not built by the harness"
        if not self.evaluations:
            return "training source has no harness protocol"
        return ""


def _rein(id, backbone, source, release, file, needs, evaluations, lines, facts, note="") -> ReleasedCheckpoint:
    url = f"{REIN_RELEASES}/{quote(release, safe='()')}/{file}"
    return ReleasedCheckpoint(id, "rein", backbone, source, file, release, url,
                              needs, evaluations, lines, (REIN_README, *facts), note=note)


_DINO = ("dinov2_vitl14_pretrain.pth",)
_REIN_OTHER_BACKBONE = "released with a config and log; the harness builds Rein on DINOv2-L and EVA02-L only"

_REIN = (
    _rein("rein-dinov2-gta5", "dinov2_vitl14", "gta5", "GTAV", "iter_40000_published.pth", _DINO,
          (("gta2cbm", "rein"),), (23, 24), (),
          "README: GTAV -> Cityscapes 66.7 and -> BDD100K 60.0 link this file; the repository's own "
          "checkpoints/dinov2_rein_and_head.pth (README evaluation example) is its tokens+head file"),
    _rein("rein-dinov2-gta5syn", "dinov2_vitl14", "gta5+synthia", "GTAV+Synthia", "iter_40000_published.pth",
          _DINO, (("gtasyn2cbm", "rein"),), (25,), (),
          "the newest README lists 72.2 for +Synthia -> Cityscapes; reported.csv line 25 keeps an earlier "
          "README's 68.1 (no file was linked then)"),
    _rein("rein-dinov2-city-1024", "dinov2_vitl14_1024", "cityscapes", "Cityscapes", "citys2acdc_40k_rein_head.pth",
          _DINO, (("city2acdc", "rein_1024"),), (28,), ("https://github.com/w1oves/Rein/issues/52",),
          "77.6 is the ACDC test server (--export writes a submission); its log shows 73.41 on ACDC val "
          "(Rein#52); the same file gives Cityscapes-C 60.0 (reported.csv line 29, no harness protocol)"),
    _rein("rein-eva02-gta5", "eva02_vitl14", "gta5", "GTAV+EVA-L", "iter_40000_published.pth",
          ("eva02_L_pt_m38m_p14to16.pt",), (("gta2cbm", "rein"),), (18, 19, 20),
          ("https://github.com/w1oves/Rein/issues/51",),
          "uploaded for the paper's Rein+EVA02 GTAV setting (Rein#51); the README lists 67.8 on Cityscapes "
          "for it, the paper (via tqdm's table, lines 18-20) 65.3 / 60.5 / 64.9"),
    _rein("rein-dinov2-urbansyn", "dinov2_vitl14", "gta5+synthia+urbansyn", "to-bdd-map", "usg2cbm_weight.pth",
          _DINO, (), (26,), (), "UrbanSyn + GTAV + Synthia -> Cityscapes 78.4; no UrbanSyn protocol in the harness"),
    _rein("rein-dinov2-semi16", "dinov2_vitl14", "gta5+synthia+urbansyn+cityscapes/16", "Semi-Supervised(1/16)",
          "iter_4000_published.pth", _DINO, (), (27,), (), "semi-supervised (1/16 of Cityscapes): 82.5 on Cityscapes"),
    _rein("rein-resnet50-gta5", None, "gta5", "GTAV+ResNet50", "iter_40000_published.pth", (), (), (31,), (),
          _REIN_OTHER_BACKBONE),
    _rein("rein-resnet101-gta5", None, "gta5", "GTAV+ResNet101", "iter_40000_published.pth", (), (), (32,), (),
          _REIN_OTHER_BACKBONE),
    _rein("rein-convnext-l-gta5", None, "gta5", "GTAV+ConvNeXt-L", "iter_40000_published.pth", (), (), (33,), (),
          _REIN_OTHER_BACKBONE),
    _rein("rein-dinov2-vits-gta5", None, "gta5", "GTAV+ViT-Small", "iter_40000_published.pth", (), (), (34,), (),
          _REIN_OTHER_BACKBONE),
    _rein("rein-dinov2-vitb-gta5", None, "gta5", "GTAV+ViT-Base", "iter_40000_published.pth", (), (), (35,), (),
          _REIN_OTHER_BACKBONE),
    _rein("rein-clip-l-gta5", None, "gta5", "GTAV+CLIP-L", "iter_40000_published.pth", (), (), (36,),
          ("https://github.com/w1oves/Rein/issues/69",),
          _REIN_OTHER_BACKBONE + "; README 58.1 on Cityscapes; the paper's CLIP run was an earlier "
          "experiment (Rein#69)"),
    _rein("rein-sam-h-gta5", None, "gta5", "GTAV+SAM-H", "iter_40000_published.pth", (), (), (), (),
          _REIN_OTHER_BACKBONE + "; README 59.2 on Cityscapes (not in reported.csv)"),
)


def _tqdm(id, backbone, source, drive_id, needs, evaluations, lines) -> ReleasedCheckpoint:
    return ReleasedCheckpoint(
        id, "tqdm", backbone, source, f"{id}.pth", "drive", f"https://drive.google.com/file/d/{drive_id}/view",
        needs, evaluations, lines, (TQDM_README,), name_confirmed=False,
        note="the README names the model, not the Drive file: save the download under this name")


_TQDM = (
    _tqdm("tqdm-eva02-clip-vit-l-gta", "eva02_clip_vitl14", "gta5", "1niKdUcoeP9Gd4F2O0LikTHBg39xHO8j0",
          ("EVA02_CLIP_L_336_psz14_s6B.pt",), (("gta2cbm", "tqdm"),), (2, 3, 4)),
    _tqdm("tqdm-clip-vit-b-gta", "clip_vitb16", "gta5", "1oKTIuPoXTJyOqqof1yqtb10m41nVkreM",
          ("ViT-B-16.pt",), (("gta2cbm", "tqdm"),), (7, 8, 9)),
    _tqdm("tqdm-eva02-clip-vit-l-city", "eva02_clip_vitl14", "cityscapes", "1_FXNthSshuvGraEX-2JxQWsGvtpeG9A7",
          ("EVA02_CLIP_L_336_psz14_s6B.pt",), (("city2bm", "tqdm"),), (5, 6)),
)


def _famix(id, backbone, source, file, needs, evaluations, lines, confirmed, note) -> ReleasedCheckpoint:
    facts = (FAMIX_README, "https://github.com/astra-vision/FAMix/issues/8")
    return ReleasedCheckpoint(id, "famix", backbone, source, file, "drive", FAMIX_FOLDER, needs, evaluations, lines,
                              facts, name_confirmed=confirmed, note=note)


_FAMIX_INFERRED = ("file name inferred from the folder's naming (FAMix#8 names gta5_synthia_rn50_dlv3+.pth); "
                   "no source lists the folder")

_FAMIX = (
    _famix("famix-rn50-gta5", "clip_rn50", "gta5", "gta5_rn50_dlv3+.pth", ("RN50.pt",), (("gta2cbm", "famix"),),
           (65, 66), False, _FAMIX_INFERRED + "; README re-evaluates it at scale 1 (C, M and ACDC val per "
           "condition, lines 65-70; GTA5 -> ACDC has no harness protocol)"),
    _famix("famix-rn101-gta5", "clip_rn101", "gta5", "gta5_rn101_dlv3+.pth", ("RN101.pt",),
           (("gta2cbm", "famix"),), (71, 72), False,
           _FAMIX_INFERRED + "; README scale-1 numbers (lines 71-76); the paper's 49.47 (line 64) is a mean of "
           "3 runs (FAMix#5)"),
    _famix("famix-rn50-gta5syn", "clip_rn50", "gta5+synthia", "gta5_synthia_rn50_dlv3+.pth", ("RN50.pt",),
           (("gtasyn2cbm", None),), (), True,
           "multi-source GTA5+SYNTHIA model (FAMix#8); no published number; the harness has no FAMix "
           "variant of gtasyn2cbm, so only the harmonised evaluation runs"),
)


def _vltseg(name, backbone, source, evaluations, lines, note="") -> ReleasedCheckpoint:
    file = f"vltseg_checkpoint_{name}.pth"
    return ReleasedCheckpoint(f"vltseg-{name.replace('_', '-')}", "vltseg", backbone, source, file, "zenodo-14766160",
                              f"{ZENODO}/{file}?download=1", ("EVA02_CLIP_L_psz14_s4B.pt",) if backbone else (),
                              evaluations, lines, (VLTSEG_README,), note=note)


_EVA = "eva02_clip_vitl14_s4b"
_VLT_512 = "re-implementation (not the authors'); 5k iterations x batch 16, crop 512"
_VLT_NO_PROTOCOL = "training source has no harness protocol; README lists its C/B/M/ACDC val numbers"
_VLTSEG = (
    _vltseg("gta_1", _EVA, "gta5", (("gta2cbm", "vltseg"),), (100,), _VLT_512),
    _vltseg("gta_2", _EVA, "gta5", (("gta2cbm", "vltseg"),), (),
            "1k frozen-backbone + 5k iterations, batch 8, drop-path 0.15; README: C 66.69 / B 60.16 / M 66.49 "
            "(not in reported.csv)"),
    _vltseg("synthia_1", _EVA, "synthia", (("syn2cbm", "vltseg"),), (101,), _VLT_512 + "; 19-class numbers"),
    _vltseg("synthia_2", _EVA, "synthia", (("syn2cbm", "vltseg"),), (),
            "1k frozen + 5k iterations; README: C 57.55 / B 52.13 / M 55.92 (not in reported.csv)"),
    _vltseg("cityscapes_1", _EVA, "cityscapes", (("city2bmacdc", "vltseg_1024"),), (102,),
            "20k iterations x batch 8, crop 1024; ACDC test 77.28 used test-time augmentation"),
    _vltseg("cityscapes_2", _EVA, "cityscapes", (("city2bmacdc", "vltseg_1024"),), (),
            "1k frozen + 20k iterations; README: ACDC val 73.92 / B 65.84 / M 77.23 (not in reported.csv)"),
    _vltseg("acdc_1", _EVA, "acdc", (), (), _VLT_NO_PROTOCOL),
    _vltseg("bdd100k_1", _EVA, "bdd100k", (), (), _VLT_NO_PROTOCOL),
    _vltseg("mapillary_1", _EVA, "mapillary", (), (), _VLT_NO_PROTOCOL),
    _vltseg("mapillary+cityscapes_1", _EVA, "mapillary+cityscapes", (), (),
            "Cityscapes test-server model (20k Mapillary + 40k Cityscapes); no harness protocol"),
    _vltseg("mapillary+cityscapes_2", _EVA, "mapillary+cityscapes", (), (),
            "Cityscapes test-server model (1k frozen + 20k Mapillary + 40k Cityscapes); no harness protocol"),
)

RELEASED_CHECKPOINTS: dict[str, ReleasedCheckpoint] = {c.id: c for c in (*_REIN, *_TQDM, *_FAMIX, *_VLTSEG)}
"""Every released checkpoint the sources name, by id."""

NO_RELEASE: dict[str, str] = {
    "set": "JingjunYi/SET README.md: no download link; its evaluation example reads a locally trained "
           "exps/exp0429_syn/iter_40000.pth; no issue offers a checkpoint",
    "vireo": "anonymouse-9c53tp182bvz/Vireo README.md, section 'Evaluation': 'replace <Vireo model>.pth with your "
             "model file'; no download link, no release, no issue offers a checkpoint",
}
"""Methods that released no checkpoint, with the source that says so."""


def get_released(checkpoint_id: str) -> ReleasedCheckpoint:
    """The registry entry of ``checkpoint_id``; a KeyError names the known ids."""
    try:
        return RELEASED_CHECKPOINTS[checkpoint_id]
    except KeyError:
        raise KeyError(f"unknown released checkpoint {checkpoint_id!r}; known: "
                       f"{', '.join(RELEASED_CHECKPOINTS)} (python -m runners.released list)") from None


def released_for_method(method: str) -> list[ReleasedCheckpoint]:
    return [c for c in RELEASED_CHECKPOINTS.values() if c.method == method]

