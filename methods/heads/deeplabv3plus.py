"""DeepLabv3+ decoder (Chen et al., ECCV 2018) in the layout of the ``DeepLabHeadV3Plus`` that FAMix uses.

FAMix (methods.md §4.1) takes its decoder from the DeepLabV3Plus-Pytorch lineage (VainF), whose head is a
*simplified* DeepLabv3+: one 3x3 convolution after the concatenation (not two), no separable convolutions.

- **ASPP** on the stride-16 map (2048 ch for ResNet-50/101): a 1x1 branch, three 3x3 branches dilated
  6/12/18 (12/24/36 at output stride 8) and an **image-pooling** branch (global average pool, 1x1 conv, BN,
  ReLU, bilinear upsampling back); each branch has 256 ch with BN + ReLU; the 5x256 concatenation is projected
  by 1x1 -> 256 + BN + ReLU + Dropout(0.1).
- **Low-level projection** of the stride-4 ``layer1`` map (256 ch): 1x1 -> 48 + BN + ReLU.
- **Decoder**: ASPP output upsampled (bilinear, ``align_corners=False``) to the low-level size, concatenated
  with the projected low-level map (48 + 256 = 304 ch), 3x3 conv 304 -> 256 + BN + ReLU, then the 1x1
  classifier (with bias) to the class scores at stride 4.

Parameter names follow that lineage so released checkpoints load with a prefix change only:
``project.{0,1}`` (low-level conv/BN), ``aspp.convs.{0..4}`` (``.0``/``.1`` conv/BN; the pooling branch is
``aspp.convs.4.{1,2}`` after its parameter-free pool at index 0), ``aspp.project.{0,1}`` and
``classifier.{0,1,3}`` (3x3 conv, BN, final 1x1 conv). Initialisation: Kaiming-normal convolutions, BN weight 1
/ bias 0 (the final classifier bias keeps PyTorch's default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ASPP", "DeepLabV3PlusConfig", "DeepLabV3PlusHead"]


@dataclass(frozen=True)
class DeepLabV3PlusConfig:
    """Widths and rates of the decoder (defaults: FAMix / DeepLabV3Plus-Pytorch at output stride 16)."""

    in_channels: int = 2048
    low_level_channels: int = 256
    num_classes: int = 19
    aspp_rates: tuple[int, int, int] = (6, 12, 18)
    aspp_channels: int = 256
    low_level_proj: int = 48
    decoder_channels: int = 256
    dropout: float = 0.1


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation if kernel == 3 else 0
    return [nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class _ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool -> 1x1 conv -> BN -> ReLU -> bilinear upsampling."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling; concat -> 1x1 projection."""

    def __init__(self, cin: int, rates: tuple[int, int, int], cout: int = 256, dropout: float = 0.1):
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(cin, cout))]
        branches += [nn.Sequential(*_conv_bn_relu(cin, cout, 3, r)) for r in rates]
        branches.append(_ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_bn_relu(len(branches) * cout, cout), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """``forward(high, low) -> logits [B, num_classes, h_low, w_low]`` (stride of the low-level map)."""

    def __init__(self, cfg: DeepLabV3PlusConfig = DeepLabV3PlusConfig()):
        super().__init__()
        self.cfg = cfg
        self.project = nn.Sequential(*_conv_bn_relu(cfg.low_level_channels, cfg.low_level_proj))
        self.aspp = ASPP(cfg.in_channels, cfg.aspp_rates, cfg.aspp_channels, cfg.dropout)
        self.classifier = nn.Sequential(
            *_conv_bn_relu(cfg.low_level_proj + cfg.aspp_channels, cfg.decoder_channels, 3),
            nn.Conv2d(cfg.decoder_channels, cfg.num_classes, 1),
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        low = self.project(low)
        high = self.aspp(high)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, high], dim=1))
