"""Write a parity fixture by running an official implementation (never part of the project).

    python -m tests.parity.generate --official /path/to/Rein --method rein

runs in a throwaway environment that has the official repository's toolbox (for the Rein family: torch,
mmengine, mmcv-lite 2.1, mmdet 3.3, mmsegmentation 1.2; see README "Fidelity / parity tests"). The official
modules are imported from the checkout given with ``--official``; this file holds no official code, only
the tiny sizes, the seeds, and how the official modules are called. mmcv-lite has no compiled ops: a stub
``mmcv._ext`` lets ``mmcv.ops`` import, and on CPU mmcv's deformable attention takes its pure-PyTorch path.

Each method writes ``tests/parity/fixtures/<method>.json``: the sizes, the seed, the official state-dict
key names and shapes (the weights are regenerated from them, :func:`tests.parity.common.official_weights`),
and :func:`tests.parity.common.summarize` records of the official outputs.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Callable

import torch

from tests.parity.common import (FIXTURES, fixed_points, official_weights, seeded, seeded_labels, summarize,
                                 write_fixture)

SEED = 0
BATCH = 2
IMAGE = (64, 96)  # input size; patch 16 -> a 4x6 token grid; strides 4..32 -> 16x24 .. 2x3 maps
TOKENS = dict(num_layers=4, embed_dims=64, patch_size=16, query_dims=32, token_length=8, lora_dim=16)
HEAD = dict(channels=64, hidden=32, queries=8, classes=19, heads=2, pd_layers=2, pd_ffn=64, points=4,
            dec_layers=3, dec_ffn=64, points_for_loss=64)
LOSS_CLASSES = [0, 5, 11, 13]  # the classes of the loss labels (fewer than the queries: every one matched)
VIREO_TEXTS, VIREO_TEXT_DIM, VIREO_TEMPLATES = 20, 768, 3  # 19 classes + "background"
VIREO_HEAD = dict(channels=1024, hidden=256, heads=8, queries=8, image=(32, 64))  # channels, hidden: fixed by the official head
TQDM_HEAD = dict(channels=64, hidden=64, heads=4, pd_layers=2, pd_ffn=128, points=4, dec_layers=3, dec_ffn=128,
                 text_dim=32)  # = the miniature tqdm head (methods.tqdm at scale="miniature")
TQDM_TEXT = dict(text_dim=32, width=64, heads=4, layers=3)  # = the miniature tqdm's ContextDecoder
WHOLE_MODEL_IMAGE = (64, 64)
REIN_CONFIG = "configs/dinov2/rein_dinov2_mask2former_512x512_bs1x4.py"  # GTA5, 40k iterations
LR_ITERATIONS = [0, 1, 1000, 20000, 39999]
# the miniature CLIP ResNet with 2 blocks per stage: the official _make_layer always adds a last block, so a
# 1-block stage would have 2 blocks there (real ResNets have >= 3)
FAMIX = dict(layers=[2, 2, 2, 3], width=8, embed_dim=32, image_size=32)
FAMIX_BANK_CLASSES = [0, 2, 13, 255]  # classes with one bank entry each; the others fall back to 255
FAMIX_PATCH_CLASSES = [[0, 2], [2, 5], [13, 13], [255, 0], [7, 2], [0, 0], [13, 255], [2, 19 - 1], [5, 13]]
CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)  # = the tiny backbone's img_size (no position-embedding resampling)
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # RGB, 0..255


# ------------------------------------------------------------------------------------------ loading
def stub_mmcv_ext() -> None:
    """mmcv-lite ships mmcv.ops without its compiled ``_ext``; a stand-in lets the pure-PyTorch paths import."""

    class _Missing(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)

            def missing(*args, **kwargs):
                raise RuntimeError(f"mmcv._ext.{name} is a compiled op (not available with mmcv-lite)")

            return missing

    ext = _Missing("mmcv._ext")
    ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)  # no loader: "mmcv-full not available"
    sys.modules.setdefault("mmcv._ext", ext)


def load_file(path: Path, name: str):
    """Import one official source file as module ``name`` (its package's __init__ is not run)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def stub_package(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def load_weights(module: torch.nn.Module, prefix: str, seed: int) -> dict[str, list[int]]:
    """Fill ``module`` with :func:`official_weights` under its official key names (``prefix`` + name)."""
    shapes = {prefix + k: list(v.shape) for k, v in module.state_dict().items()}
    weights = official_weights(shapes, seed)
    module.load_state_dict({k[len(prefix):]: v for k, v in weights.items()}, strict=True)
    return shapes


def commit_of(checkout: Path) -> str:
    """The checkout's git commit (or the first line of a ``.commit`` file, for an exported tree)."""
    if (checkout / ".commit").is_file():
        return (checkout / ".commit").read_text().split()[0]
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------------------------ inputs
def token_inputs() -> list[torch.Tensor]:
    """Per layer: tokens after that block [B, 1 + N, C] (class token first)."""
    n = (IMAGE[0] // 16) * (IMAGE[1] // 16)
    return [seeded(f"tokens.{i}", (BATCH, 1 + n, TOKENS["embed_dims"]), SEED) for i in range(TOKENS["num_layers"])]


def head_inputs() -> list[torch.Tensor]:
    """4 backbone maps at strides 4, 8, 16, 32 of an ``IMAGE`` input."""
    return [seeded(f"feature.{s}", (BATCH, HEAD["channels"], IMAGE[0] // s, IMAGE[1] // s), SEED)
            for s in (4, 8, 16, 32)]


# ------------------------------------------------------------------------------------------ the mmseg head
def mmseg_head_config(head_type: str, **extra: Any) -> dict:
    """A tiny mmseg-1.x Mask2FormerHead config with the structure of Rein's (methods.md §0)."""
    d, heads = HEAD["hidden"], HEAD["heads"]
    attn = dict(embed_dims=d, num_heads=heads, attn_drop=0.0, proj_drop=0.0, dropout_layer=None, batch_first=True)
    return dict(
        type=head_type, in_channels=[HEAD["channels"]] * 4, strides=[4, 8, 16, 32], feat_channels=d, out_channels=d,
        num_classes=HEAD["classes"], num_queries=HEAD["queries"], num_transformer_feat_level=3, align_corners=False,
        pixel_decoder=dict(
            type="mmdet.MSDeformAttnPixelDecoder", num_outs=3, norm_cfg=dict(type="GN", num_groups=32),
            act_cfg=dict(type="ReLU"),
            encoder=dict(num_layers=HEAD["pd_layers"], layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=d, num_heads=heads, num_levels=3, num_points=HEAD["points"],
                                   im2col_step=64, dropout=0.0, batch_first=True, norm_cfg=None, init_cfg=None),
                ffn_cfg=dict(embed_dims=d, feedforward_channels=HEAD["pd_ffn"], num_fcs=2, ffn_drop=0.0,
                             act_cfg=dict(type="ReLU", inplace=True))), init_cfg=None),
            positional_encoding=dict(num_feats=d // 2, normalize=True), init_cfg=None),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=d // 2, normalize=True),
        transformer_decoder=dict(return_intermediate=True, num_layers=HEAD["dec_layers"], layer_cfg=dict(
            self_attn_cfg=attn, cross_attn_cfg=attn,
            ffn_cfg=dict(embed_dims=d, feedforward_channels=HEAD["dec_ffn"], num_fcs=2,
                         act_cfg=dict(type="ReLU", inplace=True), ffn_drop=0.0, dropout_layer=None,
                         add_identity=True)), init_cfg=None),
        loss_cls=dict(type="mmdet.CrossEntropyLoss", use_sigmoid=False, loss_weight=2.0, reduction="mean",
                      class_weight=[1.0] * HEAD["classes"] + [0.1]),
        loss_mask=dict(type="mmdet.CrossEntropyLoss", use_sigmoid=True, reduction="mean", loss_weight=5.0),
        loss_dice=dict(type="mmdet.DiceLoss", use_sigmoid=True, activate=True, reduction="mean", naive_dice=True,
                       eps=1.0, loss_weight=5.0),
        train_cfg=dict(num_points=HEAD["points_for_loss"], oversample_ratio=3.0, importance_sample_ratio=0.75,
                       assigner=dict(type="mmdet.HungarianAssigner", match_costs=[
                           dict(type="mmdet.ClassificationCost", weight=2.0),
                           dict(type="mmdet.CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
                           dict(type="mmdet.DiceCost", weight=5.0, pred_act=True, eps=1.0)]),
                       sampler=dict(type="mmdet.MaskPseudoSampler")),
        **extra)


def build_mmseg_head(cfg: dict):
    stub_mmcv_ext()
    import mmdet.models  # noqa: F401  (registers mmdet's modules)
    import mmseg.models  # noqa: F401
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    return MODELS.build(ConfigDict(cfg)).eval()


def run_mmseg_head(head, x) -> dict[str, Any]:
    """All prediction sets (forward) and the final semantic logits (``predict``) at the input size."""
    from mmseg.structures import SegDataSample

    metas = [dict(img_shape=IMAGE, pad_shape=IMAGE, ori_shape=IMAGE) for _ in range(BATCH)]
    with torch.no_grad():
        cls_list, mask_list = head(x, [SegDataSample(metainfo=m) for m in metas])
        logits = head.predict(x, metas, dict())
    out = {f"set{i}.cls": summarize(c) for i, c in enumerate(cls_list)}
    out.update({f"set{i}.mask": summarize(m) for i, m in enumerate(mask_list)})
    out["semantic_logits"] = summarize(logits)
    return out


def mmseg_head_losses(head, x) -> dict[str, Any]:
    """mmseg ``Mask2FormerHead.loss`` on seeded labels with fixed point samples (:func:`fixed_points`): the
    matcher's ``torch.rand`` and the loss's importance sampling are replaced; each loss type summed over the
    prediction sets (as the harness reports them)."""
    import mmdet.models.dense_heads.mask2former_head as mmdet_m2f
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    points = HEAD["points_for_loss"]
    labels = seeded_labels((BATCH, *IMAGE), len(LOSS_CLASSES), SEED, ignore_rows=IMAGE[0] // 8,
                           classes=LOSS_CLASSES)
    match_points = fixed_points("match", 1, points, SEED)
    loss_points = fixed_points("loss", 64, points, SEED)

    class TorchWithFixedRand(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def rand(*args, **kwargs):
            return match_points.clone()

    patched_torch = TorchWithFixedRand("torch")
    samples = []
    for i in range(BATCH):
        sample = SegDataSample(metainfo=dict(img_shape=IMAGE, pad_shape=IMAGE, ori_shape=IMAGE))
        sample.gt_sem_seg = PixelData(data=labels[i][None])
        samples.append(sample)
    saved = mmdet_m2f.torch, mmdet_m2f.get_uncertain_point_coords_with_randomness
    mmdet_m2f.torch = patched_torch
    mmdet_m2f.get_uncertain_point_coords_with_randomness = lambda preds, *a, **k: loss_points[:preds.shape[0]]
    try:
        losses = head.loss(x, samples, dict())
    finally:
        mmdet_m2f.torch, mmdet_m2f.get_uncertain_point_coords_with_randomness = saved
    out = {}
    for kind in ("loss_cls", "loss_mask", "loss_dice"):
        total = sum(v for k, v in losses.items() if k.split(".")[-1] == kind)
        out[kind] = summarize(total.detach().reshape(1))
    return out


# ------------------------------------------------------------------------------------------ methods
def rein_family(official: Path, reins_file: str, module_name: str, head_file: str | None) -> dict[str, Any]:
    """Rein / SET: the official ``LoRAReins`` (tokens after every block, the query link) and, with
    ``head_file``, the official ``ReinMask2FormerHead`` fed with the linked queries."""
    reins_mod = load_file(official / reins_file, module_name)
    torch.manual_seed(SEED)
    reins = reins_mod.LoRAReins(**TOKENS).eval()
    keys = load_weights(reins, "backbone.reins.", SEED)
    outputs = {}
    with torch.no_grad():
        for i, x in enumerate(token_inputs()):
            outputs[f"tokens.layer{i}"] = summarize(reins(x, i, batch_first=True, has_cls_token=True))
        _, queries = reins.return_auto(None)
    outputs["queries"] = summarize(queries)
    if head_file:
        load_file(official / head_file, module_name + "_head")
        head = build_mmseg_head(mmseg_head_config("ReinMask2FormerHead", replace_query_feat=True))
        keys.update(load_weights(head, "decode_head.", SEED))
        outputs.update(run_mmseg_head(head, (head_inputs(), queries)))
    return {"keys": keys, "outputs": outputs}


def rein(official: Path) -> dict[str, Any]:
    return rein_family(official, "rein/models/backbones/reins.py", "official_rein_reins",
                       "rein/models/heads/rein_mask2former.py")


def set_method(official: Path) -> dict[str, Any]:
    return rein_family(official, "rein/models/backbones/reins.py", "official_set_reins",
                       "rein/models/heads/rein_mask2former.py")


def rein_model(official: Path) -> dict[str, Any]:
    """The whole official Rein model at tiny size: ``ReinsDinoVisionTransformer`` (DINOv2 blocks with LoRAReins
    after each, bilinear x4/x2/x1/x0.5 maps) + ``ReinMask2FormerHead``, on an ImageNet-normalised RGB image
    of the backbone's own size (what the data preprocessor hands the backbone); mmseg's ``predict`` logits."""
    size = WHOLE_MODEL_IMAGE
    model = build_official_rein(official)
    backbone, head = model["backbone"], model["decode_head"]
    # all parameters (ReinsDinoVisionTransformer.state_dict keeps only the reins)
    shapes = {k: list(v.shape) for k, v in [*model.named_parameters(), *model.named_buffers()]}
    weights = official_weights(shapes, SEED)
    missing, unexpected = torch.nn.Module.load_state_dict(model, weights, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    image = 120 + 60 * seeded("image", (BATCH, 3, *size), SEED)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats, queries = backbone((image - mean) / std)
        metas = [dict(img_shape=size, pad_shape=size, ori_shape=size) for _ in range(BATCH)]
        logits = head.predict((feats, queries), metas, dict())
    outputs = {f"features.{i}": summarize(f) for i, f in enumerate(feats)}
    outputs.update(queries=summarize(queries), semantic_logits=summarize(logits))
    return {"keys": shapes, "outputs": outputs, "model_image": list(size), "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD)}


def build_official_rein(official: Path):
    """The tiny official Rein segmentor parts as ``ModuleDict(backbone=..., decode_head=...)`` (mmseg names)."""
    os.environ["XFORMERS_DISABLED"] = "1"  # DINOv2's plain attention path (xformers needs CUDA)
    stub_package("xformers")
    stub_package("xformers.ops")  # imported at module level by Rein's EVA02 file, unused here
    sys.path.insert(0, str(official))
    import rein as official_rein  # noqa: F401  (registers the official modules)
    from mmseg.registry import MODELS

    build_mmseg_head(mmseg_head_config("Mask2FormerHead"))  # scope + registries
    backbone = MODELS.build(dict(
        type="ReinsDinoVisionTransformer", img_size=WHOLE_MODEL_IMAGE[0], patch_size=TOKENS["patch_size"],
        embed_dim=TOKENS["embed_dims"], depth=TOKENS["num_layers"], num_heads=2, mlp_ratio=4, init_values=1e-5,
        block_chunks=0, out_indices=list(range(TOKENS["num_layers"])),
        reins_config=dict(type="LoRAReins", **TOKENS))).eval()
    head = build_mmseg_head(mmseg_head_config("ReinMask2FormerHead", replace_query_feat=True))
    return torch.nn.ModuleDict(dict(backbone=backbone, decode_head=head))


def rein_lr(official: Path) -> dict[str, Any]:
    """Learning rate and weight decay of every trainable parameter at a few iterations, from the official
    GTA5 config (``optim_wrapper`` with Rein's ``PEFTOptimWrapperConstructor``, ``param_scheduler``) built by
    mmengine on the tiny official model in training mode (only the reins and the head train)."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS

    model = build_official_rein(official)
    model.train()
    cfg = Config.fromfile(str(official / REIN_CONFIG))
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper)) for s in cfg.param_scheduler]
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    record: dict[str, dict[str, float]] = {n: {} for n in trainable}
    decay: dict[str, float] = {}
    for it in range(cfg.train_cfg.max_iters):
        if it in LR_ITERATIONS:
            for group in wrapper.optimizer.param_groups:
                for p in group["params"]:
                    if p.requires_grad:
                        record[names[id(p)]][str(it)] = group["lr"]
                        decay[names[id(p)]] = group["weight_decay"]
        for scheduler in schedulers:
            scheduler.step()
    return {"keys": {}, "outputs": {}, "lr": record, "weight_decay": decay, "config": REIN_CONFIG,
            "iterations": LR_ITERATIONS}


def vireo_stubs() -> str:
    """Packages standing in for ``vireo.models`` so that single official files import: the CLIP loader (no
    ViT-L/14@336 weights here) returns nothing and the template lists are placeholders (the class embeddings
    are replaced by seeded ones)."""
    pkg = "official_vireo"
    stub_package(pkg)
    stub_package(pkg + ".backbones")
    stub_package(pkg + ".heads")
    clip = types.SimpleNamespace(load=lambda *a, **k: (None, None))
    stub_package(pkg + ".heads.third_party", clip=clip, imagenet_templates=types.SimpleNamespace(
        IMAGENET_TEMPLATES_SELECT_CLIP=["{}"] * VIREO_TEMPLATES, IMAGENET_TEMPLATES_SELECT=["{}"] * VIREO_TEMPLATES))
    return pkg


def vireo_class_json() -> Path:
    path = Path(__file__).parent / "fixtures" / "_vireo_classes.json"
    path.write_text(json.dumps([f"class {i}" for i in range(VIREO_TEXTS)]))
    return path


def vireo(official: Path) -> dict[str, Any]:
    """Vireo's ``VireoReins`` (GeoText tokens). Its constructor encodes class names with CLIP ViT-L/14@336
    (no weights here): the CLIP loader is stubbed and ``text_features`` [K, templates, 768] is set from a seed."""
    pkg = vireo_stubs()
    mod = load_file(official / "vireo/models/backbones/vireo.py", pkg + ".backbones.vireo")
    text = seeded("text_features", (VIREO_TEXTS, VIREO_TEMPLATES, VIREO_TEXT_DIM), SEED)
    mod.Vireo.class_embeddings = lambda self, names, templates, model: text.permute(1, 0, 2)
    class_json = vireo_class_json()
    try:
        torch.manual_seed(SEED)
        reins = mod.VireoReins(class_json=str(class_json), **TOKENS).eval()
    finally:
        class_json.unlink()
    keys = load_weights(reins, "backbone.vireo.", SEED)  # VireoDinoVisionTransformer.vireo
    outputs = {}
    n = (IMAGE[0] // 16) * (IMAGE[1] // 16)
    with torch.no_grad():
        for i, x in enumerate(token_inputs()):
            depth = seeded(f"depth.{i}", (BATCH, 1 + n + 5, TOKENS["embed_dims"]), SEED)  # resampled to N
            outputs[f"tokens.layer{i}"] = summarize(reins(x, depth, i, batch_first=True, has_cls_token=True))
        _, queries = reins.return_auto(None)
    outputs["queries"] = summarize(queries)
    return {"keys": keys, "outputs": outputs, "text_features_shape": list(text.shape)}


def vireo_head(official: Path) -> dict[str, Any]:
    """Vireo's ``VireoMask2FormerHead``: DQCM, the coarse mask prior (CMPE) and its query anchors, classification
    through text, mmseg's ``predict``. The official head fixes 1024 input channels, 256 hidden and 768-d text,
    so those stay at full size here; layers and queries are few. Queries Q and per-template class embeddings
    [K, templates, 768] are seeded inputs."""
    stub_mmcv_ext()
    pkg = vireo_stubs()
    mod = load_file(official / "vireo/models/heads/vireo_mask2former.py", pkg + ".heads.vireo_mask2former")
    text = seeded("head_text_features", (VIREO_TEXTS, VIREO_TEMPLATES, VIREO_TEXT_DIM), SEED)
    mod.VireoMask2FormerHead.class_embeddings = lambda self, names, templates, model: text.permute(1, 0, 2)
    h = VIREO_HEAD
    cfg = mmseg_head_config("VireoMask2FormerHead", replace_query_feat=True)
    d = h["hidden"]
    attn = dict(embed_dims=d, num_heads=h["heads"], attn_drop=0.0, proj_drop=0.0, dropout_layer=None,
                batch_first=True)
    cfg.update(in_channels=[h["channels"]] * 4, feat_channels=d, out_channels=d, num_queries=h["queries"],
               num_classes=VIREO_TEXTS - 1)
    cfg["pixel_decoder"]["encoder"]["layer_cfg"]["self_attn_cfg"].update(embed_dims=d, num_heads=h["heads"])
    cfg["pixel_decoder"]["encoder"]["layer_cfg"]["ffn_cfg"].update(embed_dims=d)
    cfg["pixel_decoder"]["positional_encoding"]["num_feats"] = d // 2
    cfg["positional_encoding"]["num_feats"] = d // 2
    cfg["transformer_decoder"]["layer_cfg"].update(self_attn_cfg=attn, cross_attn_cfg=attn)
    cfg["transformer_decoder"]["layer_cfg"]["ffn_cfg"].update(embed_dims=d)
    cfg["loss_cls"]["class_weight"] = [1.0] * (VIREO_TEXTS - 1) + [0.1]
    class_json = vireo_class_json()
    try:
        torch.manual_seed(SEED)
        head = build_mmseg_head(dict(cfg, class_json=str(class_json)))
    finally:
        class_json.unlink()
    keys = load_weights(head, "decode_head.", SEED)
    size = h["image"]  # small: 1024-channel maps
    feats = [seeded(f"vireo_feature.{s}", (BATCH, h["channels"], size[0] // s, size[1] // s), SEED)
             for s in (4, 8, 16, 32)]
    queries = seeded("vireo_queries", (h["queries"], d), SEED)
    from mmseg.structures import SegDataSample

    metas = [dict(img_shape=size, pad_shape=size, ori_shape=size) for _ in range(BATCH)]
    with torch.no_grad():
        cls_list, mask_list, prior = head((list(feats), queries), [SegDataSample(metainfo=m) for m in metas])
        logits = head.predict((list(feats), queries), metas, dict())
    outputs = {f"set{i}.cls": summarize(c) for i, c in enumerate(cls_list)}
    outputs.update({f"set{i}.mask": summarize(m) for i, m in enumerate(mask_list)})
    outputs.update(mask_prior=summarize(prior), semantic_logits=summarize(logits))
    return {"keys": keys, "outputs": outputs, "vireo_head": h, "text_features_shape": list(text.shape)}


def mask2former_head(official: Path) -> dict[str, Any]:
    """mmseg 1.x's own ``Mask2FormerHead`` (learned query tables: VLTSeg, frozen_m2f). The official code here is
    the installed mmsegmentation / mmdet release (``--official``: the installed ``mmseg`` package folder)."""
    import mmdet
    import mmseg

    head = build_mmseg_head(mmseg_head_config("Mask2FormerHead"))
    keys = load_weights(head, "decode_head.", SEED)
    outputs = run_mmseg_head(head, head_inputs())
    outputs.update(mmseg_head_losses(head, head_inputs()))
    return {"keys": keys, "outputs": outputs, "loss_classes": LOSS_CLASSES,
            "official_commit": f"mmsegmentation=={mmseg.__version__} mmdet=={mmdet.__version__} (PyPI)"}


def tqdm_head(official: Path) -> dict[str, Any]:
    """tqdm's ``tqdmHead`` (mmseg 0.x, mmcv 1.x): text-conditioned pixel decoder, 19 textual queries (the
    head's ``text_proj`` MLP on the class text embeddings), and ``forward_test`` + the segmentor's resize to
    the input size. Needs mmcv 1.x (mmcv 1.7.2 lite works; tqdm's vendored mmseg asks for <= 1.5.3, so the
    version string is patched) and mmdet 2.x, with the checkout's own ``mmseg`` first on the path."""
    import mmcv

    mmcv.__version__ = "1.5.3"  # the vendored mmseg's import-time range check; nothing else reads it
    sys.path.insert(0, str(official))
    import mmseg.models  # noqa: F401  (tqdm's vendored mmseg 0.x: registers tqdmHead and its pixel decoder)
    from mmcv import ConfigDict
    from mmseg.models.builder import build_head
    from mmseg.ops import resize

    h = TQDM_HEAD
    d, heads = h["hidden"], h["heads"]
    mha = dict(type="MultiheadAttention", embed_dims=d, num_heads=heads, attn_drop=0.0, proj_drop=0.0,
               dropout_layer=None, batch_first=False)

    def ffn(width):
        return dict(embed_dims=d, feedforward_channels=width, num_fcs=2, act_cfg=dict(type="ReLU", inplace=True),
                    ffn_drop=0.0, dropout_layer=None, add_identity=True)

    cfg = dict(
        type="tqdmHead", in_channels=[h["channels"]] * 4, feat_channels=d, out_channels=d, in_index=[0, 1, 2, 3],
        num_things_classes=8, num_stuff_classes=11, num_queries=19, num_transformer_feat_level=3,
        pixel_decoder=dict(
            type="tqdmMSDeformAttnPixelDecoder", num_text_embeds=19, num_outs=3,
            norm_cfg=dict(type="GN", num_groups=32), act_cfg=dict(type="ReLU"),
            encoder=dict(type="DetrTransformerDecoder", return_intermediate=True, num_layers=h["pd_layers"],
                         transformerlayers=dict(
                             type="DetrTransformerDecoderLayer",
                             attn_cfgs=[dict(type="MultiScaleDeformableAttention", embed_dims=d, num_heads=heads,
                                             num_levels=3, num_points=h["points"], im2col_step=64, dropout=0.0,
                                             batch_first=False, norm_cfg=None, init_cfg=None), mha],
                             ffn_cfgs=ffn(h["pd_ffn"]), feedforward_channels=h["pd_ffn"],
                             operation_order=("self_attn", "norm", "cross_attn", "norm", "ffn", "norm")),
                         init_cfg=None),
            positional_encoding=dict(type="SinePositionalEncoding", num_feats=d // 2, normalize=True),
            init_cfg=None),
        enforce_decoder_input_project=False,
        positional_encoding=dict(type="SinePositionalEncoding", num_feats=d // 2, normalize=True),
        transformer_decoder=dict(
            type="DetrTransformerDecoder", return_intermediate=True, num_layers=h["dec_layers"],
            transformerlayers=dict(type="DetrTransformerDecoderLayer", attn_cfgs=mha, ffn_cfgs=ffn(h["dec_ffn"]),
                                   feedforward_channels=h["dec_ffn"],
                                   operation_order=("cross_attn", "norm", "self_attn", "norm", "ffn", "norm")),
            init_cfg=None),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=2.0, reduction="mean",
                      class_weight=[1.0] * 19 + [0.1]),
        loss_mask=dict(type="CrossEntropyLoss", use_sigmoid=True, reduction="mean", loss_weight=5.0),
        loss_dice=dict(type="DiceLoss", use_sigmoid=True, activate=True, reduction="mean", naive_dice=True,
                       eps=1.0, loss_weight=5.0),
        text_proj=dict(text_in_dim=h["text_dim"], text_out_dim=d))
    head = build_head(ConfigDict(cfg)).eval()
    keys = load_weights(head, "decode_head.", SEED)
    feats = [seeded(f"feature.{s}", (BATCH, h["channels"], IMAGE[0] // s, IMAGE[1] // s), SEED)
             for s in (4, 8, 16, 32)]
    texts = seeded("texts", (BATCH, 19, h["text_dim"]), SEED)
    metas = [dict(img_shape=(*IMAGE, 3), ori_shape=(*IMAGE, 3), pad_shape=(*IMAGE, 3)) for _ in range(BATCH)]
    with torch.no_grad():
        cls_list, mask_list = head(feats, texts, metas)
        logits = resize(head.forward_test(feats, texts, metas, None), size=IMAGE, mode="bilinear",
                        align_corners=False)
    outputs = {f"set{i}.cls": summarize(c) for i, c in enumerate(cls_list)}
    outputs.update({f"set{i}.mask": summarize(m) for i, m in enumerate(mask_list)})
    outputs["semantic_logits"] = summarize(logits)
    return {"keys": keys, "outputs": outputs, "tqdm_head": h}


def tqdm_text(official: Path) -> dict[str, Any]:
    """tqdm's text side and regularizers, run through the official segmentor's own ``after_extract_feat``
    (ContextDecoder, gamma, pixel-text score map) and ``forward_train`` (the three regularizers). The segmentor
    is made without its constructor (which loads EVA-CLIP): its encoders are stand-ins that return seeded
    embeddings, its decode head returns no loss; ``context_decoder`` and ``identity_head`` are the official
    modules, built from tqdm's config values at tiny sizes."""
    import mmcv

    mmcv.__version__ = "1.5.3"
    sys.path.insert(0, str(official))
    import mmseg.models  # noqa: F401
    from mmcv import ConfigDict
    from mmseg.models.builder import build_head

    stub_package("timm.models.layers", drop_path=None, trunc_normal_=torch.nn.init.trunc_normal_)
    clip_models = load_file(official / "models/backbones/clip/models.py", "official_tqdm_clip_models")
    stub_package("official_tqdm", __path__=[str(official / "models")])
    stub_package("official_tqdm.backbones")
    stub_package("official_tqdm.backbones.eva_clip", get_backbone=None)
    stub_package("official_tqdm.backbones.utils", tokenize=None)
    segmentors = load_file(official / "models/segmentors/tqdm_eva_clip.py", "official_tqdm.segmentors.tqdm_eva_clip")

    t = TQDM_TEXT
    e, k = t["text_dim"], 19
    n = (IMAGE[0] // 16) * (IMAGE[1] // 16)
    text = seeded("text_embeddings", (k, e), SEED)
    global_feat = seeded("global_feat", (BATCH, 1, e), SEED)  # the global token, [B, 1, E] as there
    dense = seeded("dense", (BATCH, e, IMAGE[0] // 16, IMAGE[1] // 16), SEED)
    global_init = seeded("global_feat_init", (BATCH, 1, e), SEED)
    frozen_prompts = torch.nn.functional.normalize(seeded("frozen_prompts", (k, e), SEED), dim=-1)
    labels = seeded_labels((BATCH, 1, *IMAGE), k, SEED, ignore_rows=IMAGE[0] // 4)

    seg = segmentors.tqdm_EVA_CLIP.__new__(segmentors.tqdm_EVA_CLIP)
    torch.nn.Module.__init__(seg)
    seg.tau, seg.train_cfg, seg.test_cfg, seg.num_classes = 0.07, ConfigDict(), ConfigDict(), k
    seg.visual_reg = seg.textual_reg = True
    seg.backbone = types.SimpleNamespace(extract_feats=lambda img: [None, (global_feat, dense)])
    seg.reg_E0 = types.SimpleNamespace(extract_feats=lambda img: [(global_init, None)])
    seg.text_encoder = lambda texts, context=None: text
    seg.texts = seg.contexts = None
    seg.neck = None
    seg.decode_head = types.SimpleNamespace(forward_train=lambda *a, **kw: {})
    seg.context_decoder = clip_models.ContextDecoder(transformer_width=t["width"], transformer_heads=t["heads"],
                                                     transformer_layers=t["layers"], visual_dim=e, dropout=0.1)
    seg.gamma = torch.nn.Parameter(torch.empty(e))
    seg.identity_head = build_head(ConfigDict(dict(
        type="IdentityHead", in_channels=1, channels=1, num_classes=1, dropout_ratio=0.1, align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))))
    seg.reg_T0, seg.reg_I = frozen_prompts, torch.arange(k)
    seg.eval()
    keys = load_weights(torch.nn.ModuleDict(dict(context_decoder=seg.context_decoder)), "", SEED)
    keys["gamma"] = [e]
    with torch.no_grad():
        seg.gamma.copy_(official_weights({"gamma": [e]}, SEED)["gamma"])
        img = torch.zeros(BATCH, 3, *IMAGE)
        _, score_map, text_emb, _ = seg.after_extract_feat(seg.extract_feat(img))
        metas = [dict(img_shape=(*IMAGE, 3), ori_shape=(*IMAGE, 3), pad_shape=(*IMAGE, 3)) for _ in range(BATCH)]
        losses = seg.forward_train(img, metas, labels, gt_labels=None, gt_masks=None)
    outputs = {"text_embeddings": summarize(text_emb), "score_map": summarize(score_map)}
    outputs.update({name: summarize(value.reshape(1)) for name, value in losses.items() if "loss" in name})
    return {"keys": keys, "outputs": outputs, "tqdm_text": t}


def famix(official: Path) -> dict[str, Any]:
    """FAMix's network (``_Segmentation``: CLIP ModifiedResNet at output stride 16 + ``DeepLabHeadV3Plus``,
    eval mode) at a tiny width, and its style mixing (``forward(transfer=True, mix=True)``) on a seeded
    256-channel 192x192 layer1 map (the official code fixes both numbers) with a one-entry-per-class bank.
    The mixing code moves tensors to 'cuda'; here ``Tensor.to('cuda')`` is made a no-op for that call."""
    sys.path.insert(0, str(official))
    stub_package("tqdm", tqdm=None)  # the progress bar of the weight download, unused
    from network._deeplab import DeepLabHeadV3Plus, DeepLabV3
    from network.backbone.resnet_clip import CLIP_encoder

    f = FAMIX
    torch.manual_seed(SEED)
    encoder = CLIP_encoder(f["embed_dim"], f["image_size"], tuple(f["layers"]), f["width"], [False, False, True])
    model = DeepLabV3(encoder.visual, DeepLabHeadV3Plus(f["width"] * 32, f["width"] * 4, 19, [6, 12, 18])).eval()
    keys = load_weights(model, "", SEED)
    image = 120 + 60 * seeded("image", (BATCH, 3, *IMAGE), SEED)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits, _ = model((image - mean) / std)
    outputs = {"logits": summarize(logits)}

    low = 2 + seeded("low_level", (BATCH, 256, 192, 192), SEED)
    s = torch.rand((BATCH, 256, 1, 1), generator=torch.Generator().manual_seed(SEED))
    bank = {f"{c}_{stat}": [] for c in [*range(19), 255] for stat in ("mu", "std")}
    for c in FAMIX_BANK_CLASSES:
        bank[f"{c}_mu"].append(seeded(f"bank_mu.{c}", (256, 1, 1), SEED))
        bank[f"{c}_std"].append(0.5 + seeded(f"bank_std.{c}", (256, 1, 1), SEED).abs())
    captured = {}

    def backbone(x, *args, **kwargs):
        if kwargs.get("get1"):
            return low
        captured["low_level"] = x.clone()
        return torch.zeros(BATCH, 1, 1, 1)

    mixer = DeepLabV3(backbone, lambda features: torch.zeros(BATCH, 19, 48, 48))
    to = torch.Tensor.to
    torch.Tensor.to = lambda self, *a, **k: self if a[:1] == ("cuda",) else to(self, *a, **k)
    try:
        with torch.no_grad():
            _, feats = mixer(torch.zeros(BATCH, 3, 768, 768), transfer=True, mix=True, most_list=FAMIX_PATCH_CLASSES,
                             saved_params=bank, activation=torch.nn.ReLU(), s=s)
    finally:
        torch.Tensor.to = to
    outputs["mixed_low_level"] = summarize(feats["low_level"])
    return {"keys": keys, "outputs": outputs, "famix": f, "bank_classes": FAMIX_BANK_CLASSES,
            "patch_classes": FAMIX_PATCH_CLASSES}


METHODS: dict[str, tuple[Callable[[Path], dict], str]] = {
    "rein": (rein, "w1oves/Rein"),
    "rein_model": (rein_model, "w1oves/Rein"),
    "rein_lr": (rein_lr, "w1oves/Rein"),
    "set": (set_method, "JingjunYi/SET"),
    "vireo": (vireo, "anonymouse-9c53tp182bvz/Vireo"),
    "vireo_head": (vireo_head, "anonymouse-9c53tp182bvz/Vireo"),
    "tqdm_head": (tqdm_head, "ByeongHyunPak/tqdm"),
    "tqdm_text": (tqdm_text, "ByeongHyunPak/tqdm"),
    "famix": (famix, "astra-vision/FAMix"),
    "mask2former_head": (mask2former_head, "open-mmlab/mmsegmentation 1.2.2 + mmdet 3.3.0 (installed)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="path of the official checkout")
    parser.add_argument("--method", choices=sorted(METHODS), required=True)
    parser.add_argument("--out", type=Path, help="fixture path (default tests/parity/fixtures/<method>.json)")
    args = parser.parse_args(argv)
    if not args.official.is_dir():
        parser.error(f"--official {args.official}: not a directory (clone the official repository there)")
    run, repo = METHODS[args.method]
    torch.set_num_threads(1)
    stub_mmcv_ext()
    record = run(args.official.resolve())
    import mmseg  # the toolbox versions that produced the numbers
    record.setdefault("official_commit", commit_of(args.official))
    record.update(method=args.method, official_repo=repo, seed=SEED,
                  batch=BATCH, image=list(IMAGE), tokens=TOKENS, head=HEAD, torch=torch.__version__,
                  mmseg=mmseg.__version__)
    out = args.out or FIXTURES / f"{args.method}.json"
    write_fixture(out, record)
    print(f"wrote {out} ({len(record['outputs'])} outputs, {len(record['keys'])} official keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
