"""Mask2Former pixel decoder: a multi-scale deformable-attention encoder plus an FPN path.

Pure PyTorch (no mmcv / custom CUDA ops). The deformable attention samples with ``F.grid_sample``
(the reference "ms_deform_attn_core" formulation of Deformable DETR). Shapes use
B = batch, N = tokens, C = channels, L = levels, P = sampling points, M = attention heads.

Optional tqdm "pixel semantic clarity enhancement": every encoder layer also cross-attends from the
pixel tokens to text embeddings (one shared ``text_proj`` Linear and one learned key position table).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MSDeformAttnPixelDecoder",
    "MultiScaleDeformableAttention",
    "MultiheadAttention",
    "ms_deform_attn_sample",
    "reference_points",
    "sine_positional_encoding",
]


def sine_positional_encoding(
    height: int,
    width: int,
    num_feats: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    temperature: float = 10000.0,
) -> Tensor:
    """DETR's normalised sine encoding of an unpadded ``height x width`` grid -> [2*num_feats, H, W].

    The first ``num_feats`` channels encode y, the last ``num_feats`` encode x; within each half the
    channels alternate sin/cos. Coordinates run 1..H (1..W) and are scaled to (0, 2*pi].
    """
    if num_feats % 2:
        raise ValueError(f"sine positional encoding needs an even num_feats, got {num_feats}")
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32) / (height + eps) * scale
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32) / (width + eps) * scale
    dim_t = torch.arange(num_feats, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def encode(coord: Tensor) -> Tensor:  # [n] -> [n, num_feats], interleaved sin/cos
        arg = coord[:, None] / dim_t
        return torch.stack((arg[:, 0::2].sin(), arg[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).to(dtype)


def reference_points(shapes: list[tuple[int, int]], device=None) -> Tensor:
    """Normalised (x, y) pixel centres of every level, concatenated -> [sum(H*W), 2] in (0, 1)."""
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.flatten(), grid_y.flatten()), dim=-1))
    return torch.cat(points, dim=0)


def ms_deform_attn_sample(
    value: Tensor,
    shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention core, pure PyTorch.

    value: [B, sum(H_l*W_l), M, D] (levels concatenated in ``shapes`` order);
    sampling_locations: [B, Nq, M, L, P, 2], normalised (x, y) in [0, 1] per level;
    attention_weights: [B, Nq, M, L, P] (already softmax-normalised over L*P).
    Returns [B, Nq, M*D]: per head, sum over levels and points of weight x bilinear sample
    (``grid_sample``, zero padding, align_corners=False, i.e. pixel centres at (i+0.5)/size).
    """
    batch, _, heads, dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [B, H*W, M, D] -> [B*M, D, H, W]
        v = values[lvl].permute(0, 2, 3, 1).reshape(batch * heads, dim, h, w)
        # [B, Nq, M, P, 2] -> [B*M, Nq, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(batch * heads, num_queries, points, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*M, D, Nq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, levels * points)
    out = (stacked * weights).sum(-1)  # [B*M, D, Nq]
    return out.view(batch, heads * dim, num_queries).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable DETR's multi-scale deformable attention (no residual; the layer adds it).

    Each query predicts, per head / level / point, a sampling offset (``sampling_offsets``, in units
    of that level's pixels) around its reference point and a weight (``attention_weights``,
    softmax over levels x points); values come from ``value_proj`` and are merged by ``output_proj``.
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.num_levels, self.num_points = dim, num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR init: zero offset weights, offset bias = a ring of directions per head
        (point k at distance k+1), uniform attention, Xavier value/output projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        device = self.sampling_offsets.bias.device
        thetas = torch.arange(self.num_heads, dtype=torch.float32, device=device) * (2 * math.pi / self.num_heads)
        grid = torch.stack((thetas.cos(), thetas.sin()), dim=-1)
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32, device=device).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: Tensor, ref_points: Tensor, value: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        """query [B, Nq, C] (positional encoding already added), ref_points [B or 1, Nq, 2] normalised
        (x, y), value [B, sum(H*W), C] over the ``shapes`` levels -> [B, Nq, C]."""
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if len(shapes) != levels:
            raise ValueError(f"expected {levels} levels, got shapes {shapes}")
        v = self.value_proj(value).view(batch, value.shape[1], heads, self.dim // heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.float().softmax(-1).view(batch, num_queries, heads, levels, points)
        # Offsets are in pixels of each level: divide by (W_l, H_l) as Python scalars (no host copy).
        # Sampling runs in fp32 (bf16 coordinates would be off by a fraction of a pixel).
        offsets = offsets.float()
        per_level = [
            torch.stack((offsets[:, :, :, lvl, :, 0] / w, offsets[:, :, :, lvl, :, 1] / h), dim=-1)
            for lvl, (h, w) in enumerate(shapes)
        ]
        locations = ref_points.float()[:, :, None, None, None, :] + torch.stack(per_level, dim=3)
        out = ms_deform_attn_sample(v.float(), shapes, locations, weights)
        return self.output_proj(out.to(value.dtype))


class MultiheadAttention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` (batch-first).

    Parameter names follow ``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj``) so weights map one-to-one. ``attn_mask`` is boolean, True = may attend,
    shaped [B, Nq, Nk] (shared by all heads) or anything broadcastable to [B, M, Nq, Nk].
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        heads = self.num_heads

        def split(x: Tensor) -> Tensor:  # [B, N, C] -> [B, M, N, C/M]
            return x.unflatten(-1, (heads, -1)).transpose(1, 2)

        q = split(F.linear(query, w_q, b_q))
        k = split(F.linear(key, w_k, b_k))
        v = split(F.linear(value, w_v, b_v))
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _FFN(nn.Sequential):
    """Linear -> ReLU -> Linear (the residual is added by the layer)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attn, norm, [text cross-attn, norm,] FFN, norm."""

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int,
                 text_cross_attention: bool = False):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.text_attn = MultiheadAttention(dim, num_heads) if text_cross_attention else None
        self.text_norm = nn.LayerNorm(dim) if text_cross_attention else None
        self.ffn = _FFN(dim, ffn_dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor, ref_points: Tensor, shapes: list[tuple[int, int]],
                text: Tensor | None = None, text_pos: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.self_attn(x + pos, ref_points, x, shapes))
        if self.text_attn is not None:
            if text is None or text_pos is None:
                raise ValueError("this pixel decoder has text cross-attention: pass text_context")
            x = self.text_norm(x + self.text_attn(x + pos, text + text_pos, text))
        return self.norm2(x + self.ffn(x))


class ConvGN(nn.Sequential):
    """Conv2d -> GroupNorm(32) [-> ReLU] (mmcv's ConvModule with a GN norm)."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool, relu: bool):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias),
                                   nn.GroupNorm(32, cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's pixel decoder.

    The ``num_levels`` coarsest maps are projected (1x1 conv + GN) to ``dim``, given sine positions
    plus a learned ``level_embed``, and refined jointly by ``num_layers`` deformable encoder layers.
    Finer maps (here only stride 4) go through an FPN path (1x1 lateral conv + GN, add the upsampled
    coarser output, 3x3 conv + GN + ReLU); a 1x1 ``mask_feature`` conv gives the per-pixel embedding.

    forward(features, text=None) -> (mask_features [B, dim, H/4, W/4],
                                     memories: list of [B, dim, h, w], coarsest first).
    """

    def __init__(
        self,
        in_channels: tuple[int, ...] = (1024, 1024, 1024, 1024),
        dim: int = 256,
        num_heads: int = 8,
        num_layers: int = 6,
        ffn_dim: int = 1024,
        num_levels: int = 3,
        num_points: int = 4,
        text_dim: int | None = None,
        num_text_tokens: int = 19,
    ):
        super().__init__()
        if len(in_channels) <= num_levels:
            raise ValueError(f"need more than {num_levels} input maps (strides 4..32), got {len(in_channels)}")
        if dim % 32:
            raise ValueError(f"GroupNorm(32) needs dim divisible by 32, got {dim}")
        self.dim, self.num_levels = dim, num_levels
        coarse = list(in_channels[-num_levels:])[::-1]  # coarsest first
        fine = list(in_channels[:-num_levels])[::-1]  # e.g. [stride 4]
        self.input_convs = nn.ModuleList(ConvGN(c, dim, 1, bias=True, relu=False) for c in coarse)
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(dim, num_heads, num_levels, num_points, ffn_dim, text_dim is not None)
            for _ in range(num_layers)
        )
        self.lateral_convs = nn.ModuleList(ConvGN(c, dim, 1, bias=False, relu=False) for c in fine)
        self.output_convs = nn.ModuleList(ConvGN(dim, dim, 3, bias=False, relu=True) for _ in fine)
        self.mask_feature = nn.Conv2d(dim, dim, 1)
        if text_dim is not None:
            self.text_proj = nn.Linear(text_dim, dim)
            self.text_pos = nn.Parameter(torch.empty(num_text_tokens, dim))
        else:
            self.text_proj = None
            self.text_pos = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for conv in self.input_convs:
            nn.init.xavier_uniform_(conv[0].weight)
            nn.init.zeros_(conv[0].bias)
        for conv in [*self.lateral_convs, *self.output_convs]:
            nn.init.kaiming_uniform_(conv[0].weight, a=1)
        nn.init.kaiming_uniform_(self.mask_feature.weight, a=1)
        nn.init.zeros_(self.mask_feature.bias)
        nn.init.normal_(self.level_embed)
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        for layer in self.layers:
            layer.self_attn.reset_parameters()
        if self.text_pos is not None:
            nn.init.normal_(self.text_pos)

    def forward(self, features: list[Tensor] | tuple[Tensor, ...], text: Tensor | None = None
                ) -> tuple[Tensor, list[Tensor]]:
        n_in = len(self.input_convs) + len(self.lateral_convs)
        if len(features) != n_in:
            raise ValueError(f"pixel decoder expects {n_in} feature maps (fine to coarse), got {len(features)}")
        coarse = list(features[-self.num_levels:])[::-1]
        tokens, positions, shapes = [], [], []
        for i, feat in enumerate(coarse):
            x = self.input_convs[i](feat)
            h, w = x.shape[-2:]
            pos = sine_positional_encoding(h, w, self.dim // 2, device=x.device, dtype=x.dtype)
            positions.append((pos.flatten(1).T + self.level_embed[i])[None])  # [1, h*w, C]
            tokens.append(x.flatten(2).transpose(1, 2))
            shapes.append((int(h), int(w)))
        x = torch.cat(tokens, dim=1)
        pos = torch.cat(positions, dim=1).to(x.dtype)
        ref = reference_points(shapes, device=x.device)[None]

        text_tokens = text_pos = None
        if self.text_proj is not None:
            if text is None:
                raise ValueError("text cross-attention is enabled: pass text_context [B, T, text_dim]")
            if text.shape[1] != self.text_pos.shape[0]:
                raise ValueError(f"text_context has {text.shape[1]} tokens, expected {self.text_pos.shape[0]}")
            text_tokens = self.text_proj(text)
            text_pos = self.text_pos[None].to(text_tokens.dtype)

        for layer in self.layers:
            x = layer(x, pos, ref, shapes, text_tokens, text_pos)

        batch = x.shape[0]
        memories = [
            t.transpose(1, 2).reshape(batch, self.dim, h, w)
            for t, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        out = memories[-1]
        fine = list(features[: -self.num_levels])[::-1]
        for lateral, output, feat in zip(self.lateral_convs, self.output_convs, fine):
            y = lateral(feat)
            y = y + F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
            out = output(y)
        return self.mask_feature(out), memories
