"""OpenAI CLIP ResNet image tower ("ModifiedResNet", Radford et al. 2021) with dilation for dense prediction.

What CLIP changed with respect to a torchvision ResNet, and what this module keeps:

- a 3-convolution **stem** (3x3 stride 2, 3x3, 3x3; BN + ReLU after each) followed by a 2x2 average pool
  (instead of one 7x7 convolution and a max pool): stride 4;
- **anti-aliased strided blocks**: every convolution has stride 1; a block that downsamples applies an
  ``AvgPool2d(stride)`` after its 3x3 convolution, and its shortcut applies the same average pool before the
  1x1 projection (key names ``downsample.0`` conv, ``downsample.1`` BN, the pool has no parameters);
- an **attention pool** (``attnpool``: multi-head QKV attention of the mean token over the 7x7 grid plus a
  learned positional embedding, projected to the joint image-text space) instead of global average pooling.
  It is a separate, optional module (:class:`AttentionPool2d`): segmentation methods drop it (FAMix replaces it
  with identity) but FAMix's style mining needs it to embed images in CLIP space.

**Output stride.** CLIP downsamples by 32. For segmentation the tower runs at output stride 16 (or 8): the
strided block of each dilated stage keeps stride 1 (no average pool, neither in the residual branch nor in the
shortcut) and the 3x3 convolutions of that stage are dilated instead. The weights are unchanged; only the
geometry differs, so the *same* module runs either way: ``clip_geometry=True`` runs CLIP's original strides
(no dilation), which FAMix's style mining uses to push patches through layers 2-4 and the attention pool.

Which blocks are dilated follows FAMix's ``network/backbone/resnet_clip.py`` (``dilation_pattern="famix"``):
in a dilated stage the first block and the middle blocks keep the previous dilation and only the **last** block
uses the new one, so at output stride 16 the three blocks of ``layer4`` have dilations (1, 1, 2).
torchvision's ``replace_stride_with_dilation`` dilates every block but the first ((1, 2, 2));
``dilation_pattern="torchvision"`` selects that.

Official files: OpenAI ``RN50.pt`` / ``RN101.pt`` (TorchScript archives, fp16, image tower under ``visual.``:
``visual.conv1.weight``, ``visual.bn1.*``, ``visual.layer1.0.conv1.weight``, ...,
``visual.layer1.0.downsample.0.weight``, ``visual.attnpool.{positional_embedding, q_proj, k_proj, v_proj,
c_proj}``), open_clip state dicts of the same layout, or bare tower state dicts (no prefix). Text-tower keys
are ignored and reported; see :func:`load_clip_resnet`.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.weights import KeyReport, read_state_dict

__all__ = [
    "RESNET_CONFIGS",
    "AttentionPool2d",
    "CLIPBottleneck",
    "CLIPResNet",
    "CLIPResNetConfig",
    "clip_resnet_config",
    "load_clip_resnet",
    "split_clip_visual_state",
]

DILATION_PATTERNS = ("famix", "torchvision")


@dataclass(frozen=True)
class CLIPResNetConfig:
    """One CLIP ResNet image tower.

    ``layers``: blocks per stage; ``width``: stem width (stage widths 1x/2x/4x/8x, outputs x4);
    ``embed_dim``: output of the attention pool (the joint embedding size); ``image_size``: CLIP's input size,
    which fixes the attention pool's positional grid (``image_size // 32``); ``output_stride``: 32 (CLIP), 16
    (``layer4`` dilated) or 8 (``layer3`` and ``layer4`` dilated) in the segmentation geometry.
    """

    name: str
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    embed_dim: int = 1024
    image_size: int = 224
    output_stride: int = 16
    dilation_pattern: str = "famix"
    weights_file: str | None = None

    def __post_init__(self) -> None:
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if self.dilation_pattern not in DILATION_PATTERNS:
            raise ValueError(f"dilation_pattern must be one of {DILATION_PATTERNS}, got {self.dilation_pattern!r}")
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {self.layers}")

    @property
    def heads(self) -> int:
        """Attention-pool heads: CLIP uses a head width of 64 (``width * 32 // 64``)."""
        return max(1, self.width * 32 // 64)

    @property
    def channels(self) -> tuple[int, int, int, int]:
        """Output channels of layer1..layer4 (bottleneck expansion 4)."""
        return tuple(self.width * m * 4 for m in (1, 2, 4, 8))  # type: ignore[return-value]

    @property
    def feature_dim(self) -> int:
        """Channels of the last stage (the attention pool's input)."""
        return self.width * 32


RESNET_CONFIGS: dict[str, CLIPResNetConfig] = {
    "RN50": CLIPResNetConfig("RN50", (3, 4, 6, 3), 64, 1024, 224, weights_file="RN50.pt"),
    "RN101": CLIPResNetConfig("RN101", (3, 4, 23, 3), 64, 512, 224, weights_file="RN101.pt"),
    # CPU-sized tower for tests and the miniature scale: same structure, 3 blocks in layer4 (FAMix trains
    # layer4[2]), attention pool over a 1x1 grid, joint embedding 32 (the "tiny" text tower's).
    "tiny": CLIPResNetConfig("tiny", (1, 1, 1, 3), 8, 32, 32),
}
"""CLIP ResNet towers by name (shapes of OpenAI's RN50 / RN101 releases, as in open_clip's model configs)."""


def clip_resnet_config(name: str, **overrides) -> CLIPResNetConfig:
    """``RESNET_CONFIGS[name]`` with field overrides (e.g. ``output_stride=32``)."""
    try:
        cfg = RESNET_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown CLIP ResNet {name!r}; available: {', '.join(RESNET_CONFIGS)}") from None
    return dataclasses.replace(cfg, **overrides)


# --------------------------------------------------------------------------------------------- modules
class CLIPBottleneck(nn.Module):
    """CLIP's anti-aliased bottleneck: 1x1 -> 3x3 -> [avg-pool if strided] -> 1x1 (x4), average-pooled shortcut.

    ``stride`` is CLIP's stride (used with ``clip_geometry=True``); ``seg_stride`` / ``dilation`` are the
    segmentation geometry (a dilated stage has ``seg_stride=1``). Parameter names are OpenAI's.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, seg_stride: int | None = None,
                 dilation: int = 1):
        super().__init__()
        self.stride = stride
        self.seg_stride = stride if seg_stride is None else seg_stride
        self.dilation = dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)  # padding/dilation set in forward
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample: nn.Sequential | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, seg_stride={self.seg_stride}, dilation={self.dilation}"

    def forward(self, x: Tensor, clip_geometry: bool = False) -> Tensor:
        stride = self.stride if clip_geometry else self.seg_stride
        dilation = 1 if clip_geometry else self.dilation
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.conv2d(out, self.conv2.weight, None, 1, dilation, dilation)
        out = F.relu(self.bn2(out))
        if stride > 1:
            out = F.avg_pool2d(out, stride)
        out = self.bn3(self.conv3(out))
        identity = x
        if self.downsample is not None:
            identity = self.downsample(F.avg_pool2d(x, stride) if stride > 1 else x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """CLIP's attention pool: the mean token attends (multi-head QKV) over [mean; grid] + positional embedding;
    the attended mean token is projected by ``c_proj`` to the joint embedding. Input [B, C, g, g] with g the
    pretraining grid (``image_size // 32``)."""

    def __init__(self, grid: int, dim: int, heads: int, output_dim: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention-pool width {dim} is not divisible by {heads} heads")
        self.grid, self.heads = grid, heads
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, dim) / dim ** 0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if h * w + 1 != self.positional_embedding.shape[0]:
            raise ValueError(f"the attention pool was pretrained on a {self.grid}x{self.grid} grid; got {h}x{w} "
                             f"(feed CLIP-sized inputs: {self.grid * 32} px images, or {self.grid * 8} px layer1 maps)")
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        d = c // self.heads
        q = self.q_proj(tokens[:, :1]).view(b, 1, self.heads, d).transpose(1, 2)
        k = self.k_proj(tokens).view(b, -1, self.heads, d).transpose(1, 2)
        v = self.v_proj(tokens).view(b, -1, self.heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, 1, d]
        return self.c_proj(out.transpose(1, 2).reshape(b, c))


class CLIPResNet(nn.Module):
    """CLIP ResNet image tower (stem, layer1-4, optional attention pool) with a dilated segmentation geometry.

    ``forward(x)`` returns the stage outputs ``{"stem", "layer1", ..., "layer4"}`` in the segmentation
    geometry (output stride ``cfg.output_stride``); ``clip_geometry=True`` runs CLIP's own strides.
    """

    def __init__(self, cfg: CLIPResNetConfig, *, attnpool: bool = True):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w // 2)
        self.conv2 = nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w // 2)
        self.conv3 = nn.Conv2d(w // 2, w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w)
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[cfg.output_stride]
        self._inplanes, self._dilation = w, 1
        self.layer1 = self._make_layer(w, cfg.layers[0], 1, False)
        self.layer2 = self._make_layer(w * 2, cfg.layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(w * 4, cfg.layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(w * 8, cfg.layers[3], 2, dilate[2])
        del self._inplanes, self._dilation
        self.attnpool = (AttentionPool2d(cfg.image_size // 32, cfg.feature_dim, cfg.heads, cfg.embed_dim)
                         if attnpool else None)

    def _make_layer(self, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        previous = self._dilation
        seg_stride = stride
        if dilate:
            self._dilation *= stride
            seg_stride = 1
        if self.cfg.dilation_pattern == "famix":  # first and middle blocks: previous dilation; last: new one
            first = 1 if dilate else previous
            rates = [first] + [previous] * max(blocks - 2, 0) + ([self._dilation] if blocks > 1 else [])
        else:  # torchvision: first block previous dilation, the others the new one
            rates = [previous] + [self._dilation] * (blocks - 1)
        layers = [CLIPBottleneck(self._inplanes, planes, stride, seg_stride=seg_stride, dilation=rates[0])]
        self._inplanes = planes * CLIPBottleneck.expansion
        layers += [CLIPBottleneck(self._inplanes, planes, dilation=r) for r in rates[1:]]
        return nn.Sequential(*layers)

    # ------------------------------------------------------------------ forward pieces
    @property
    def stages(self) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential, nn.Sequential]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def stem(self, x: Tensor) -> Tensor:
        """3-conv stem + 2x2 average pool (stride 4). ``x``: normalised images [B, 3, H, W]."""
        x = x.to(self.conv1.weight.dtype)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return F.avg_pool2d(x, 2)

    def forward_stage(self, index: int, x: Tensor, clip_geometry: bool = False) -> Tensor:
        """Run ``layer{index}`` (1-based)."""
        for block in self.stages[index - 1]:
            x = block(x, clip_geometry)
        return x

    def forward_stages(self, x: Tensor, start: int = 1, end: int = 4, clip_geometry: bool = False) -> Tensor:
        """Run ``layer{start}`` .. ``layer{end}`` on the output of the previous stage (or of the stem)."""
        for index in range(start, end + 1):
            x = self.forward_stage(index, x, clip_geometry)
        return x

    def forward(self, x: Tensor, clip_geometry: bool = False) -> dict[str, Tensor]:
        out = {"stem": self.stem(x)}
        y = out["stem"]
        for index in range(1, 5):
            y = out[f"layer{index}"] = self.forward_stage(index, y, clip_geometry)
        return out

    def encode_image(self, x: Tensor) -> Tensor:
        """CLIP image embedding [B, embed_dim] (CLIP geometry + attention pool; not normalised)."""
        if self.attnpool is None:
            raise RuntimeError("this tower was built without its attention pool (attnpool=False)")
        return self.attnpool(self.forward_stages(self.stem(x), 1, 4, clip_geometry=True))

    # ------------------------------------------------------------------ official weights
    def load_official(self, source: str | Path | Mapping[str, Tensor]) -> KeyReport:
        """Load an official CLIP file (or state dict) into this tower; see :func:`load_clip_resnet`."""
        return load_clip_resnet(source, self, self.attnpool)


# --------------------------------------------------------------------------------------------- loading
_TEXT_TOP = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection",
             "logit_scale", "logit_bias", "input_resolution", "context_length", "vocab_size", "attn_mask", "text.")


def split_clip_visual_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str]]:
    """Split an official CLIP state dict into (tower keys without ``visual.``, attention-pool keys without
    ``attnpool.``, ignored keys). Accepts OpenAI / open_clip layouts (``visual.*`` + text keys) and bare tower
    dicts (``conv1.weight``, ``layer1.0...``)."""
    tower: dict[str, Tensor] = {}
    pool: dict[str, Tensor] = {}
    ignored: list[str] = []
    has_visual = any(k.startswith("visual.") for k in state)
    for key, value in state.items():
        if has_visual:
            if not key.startswith("visual."):
                ignored.append(key)
                continue
            name = key[len("visual."):]
        elif key.startswith(_TEXT_TOP):
            ignored.append(key)
            continue
        else:
            name = key
        if name.startswith("attnpool."):
            pool[name[len("attnpool."):]] = value
        else:
            tower[name] = value
    return tower, pool, ignored


def _load_into(module: nn.Module, state: dict[str, Tensor], prefix: str, what: str,
               source: str) -> tuple[list[str], list[str], int]:
    """Copy ``state`` into ``module`` (cast to its dtype; meta modules get the tensors assigned).
    Returns (missing, unexpected, number of fp16 tensors converted) with ``prefix`` on the names."""
    own = module.state_dict()
    unexpected = sorted(prefix + k for k in state if k not in own)
    errors = [f"{prefix}{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if errors:
        raise ValueError(f"{source}: {what} shapes do not match the config; is this the right file for this "
                         f"architecture (RN50.pt vs RN101.pt)?\n  " + "\n  ".join(errors[:12]))
    halves = sum(1 for k, v in state.items() if k in own and v.is_floating_point() and v.dtype != own[k].dtype)
    load = {k: v.to(own[k].dtype) for k, v in state.items() if k in own}
    on_meta = any(t.is_meta for t in own.values())
    module.load_state_dict(load, strict=False, assign=on_meta)
    # BN ``num_batches_tracked`` counters are bookkeeping: not reported when a file lacks them
    missing = sorted(prefix + k for k in own if k not in load and not k.endswith("num_batches_tracked"))
    return missing, unexpected, halves


def load_clip_resnet(source: str | Path | Mapping[str, Tensor], tower: nn.Module,
                     attnpool: nn.Module | None = None) -> KeyReport:
    """Load OpenAI ``RN50.pt`` / ``RN101.pt`` (TorchScript archive or state dict) into ``tower`` (a
    :class:`CLIPResNet`) and, when given, ``attnpool`` (an :class:`AttentionPool2d`; default: the tower's own).

    The report lists ``missing`` tower/pool keys, ``unexpected`` visual keys with no place in the tower (e.g.
    the wrong block count: RN50 weights into an RN101 config), ``ignored`` keys (the text tower, and the
    attention pool when no pool module is given) and ``converted`` (fp16 -> fp32). Shape mismatches raise.
    """
    label = str(source) if not isinstance(source, Mapping) else "<state dict>"
    state = dict(source) if isinstance(source, Mapping) else read_state_dict(source)
    tower_state, pool_state, ignored = split_clip_visual_state(state)
    own_pool = getattr(tower, "attnpool", None)
    if attnpool is None:
        attnpool = own_pool
    if attnpool is not None and attnpool is own_pool:  # the tower's own pool loads with the tower
        tower_state.update({f"attnpool.{k}": v for k, v in pool_state.items()})
        pool_state, pool_target = {}, None
    else:
        pool_target = attnpool
    target = tower
    missing, unexpected, halves = _load_into(target, tower_state, "visual.", "image tower", label)
    if pool_target is not None:
        m, u, h = _load_into(pool_target, pool_state, "visual.attnpool.", "attention pool", label)
        missing += m
        unexpected += u
        halves += h
    elif pool_state:
        ignored += [f"visual.attnpool.{k}" for k in pool_state]
    converted = [f"{halves} tensors cast to the model dtype (OpenAI files are fp16)"] if halves else []
    return KeyReport(missing=missing, unexpected=unexpected, converted=converted, ignored=sorted(ignored))
