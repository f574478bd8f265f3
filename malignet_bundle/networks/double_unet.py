"""Double U-Net (Jha et al. 2020), the whole-body bone-scan segmenter of the related work, from MONAI blocks.

Two U-Nets in a row. The first segments the crop; its foreground probability (1 − P(background)) gates the
input of the second, which segments again with skip connections from both encoders. Both have atrous spatial
pyramid pooling at the bottleneck (MONAI ``SimpleASPP``) and squeeze-and-excitation after every decoder block
(MONAI ``ChannelSELayer``); the second encoder's blocks have squeeze-and-excitation too, as in the original,
whose first encoder is an ImageNet VGG-19 (here a plain convolutional encoder, trained from scratch as every
network of this bundle is, on one-channel scintigrams). The convolution, down- and up-sampling blocks are
MONAI's ``BasicUNet`` ones (``TwoConv``, ``Down``, ``UpCat``).

The original has one output per U-Net, each a sigmoid mask, trained together. Here, for C lesion classes, each
U-Net has C + 1 class logits (softmax); the second's are the network's output. With ``deep_supervision`` a
training forward returns both, stacked as MONAI's ``DynUNet`` stacks its deep-supervision heads ((B, 2, C + 1,
H, W), the final output first), so a deep-supervision loss trains the first U-Net as well; an evaluation
forward returns the final (B, C + 1, H, W) logits only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ChannelSELayer, SimpleASPP
from monai.networks.layers import Conv
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import Tensor, nn

__all__ = ["DoubleUNet"]


class _SqueezeExcite(nn.Sequential):
    """A block followed by channel squeeze-and-excitation."""

    def __init__(self, block: nn.Module, spatial_dims: int, channels: int, reduction: int) -> None:
        super().__init__(block, ChannelSELayer(spatial_dims, channels, r=max(1, min(reduction, channels))))


class _Encoder(nn.Module):
    """Full-resolution block, then ``Down`` blocks; returns every level's features, bottleneck last."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: Sequence[int],
        act: str | tuple,
        norm: str | tuple,
        dropout: float,
        se_reduction: int | None,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = [TwoConv(spatial_dims, in_channels, features[0], act, norm, True, dropout)]
        blocks += [
            Down(spatial_dims, features[i - 1], features[i], act, norm, True, dropout) for i in range(1, len(features))
        ]
        if se_reduction is not None:
            blocks = [_SqueezeExcite(b, spatial_dims, f, se_reduction) for b, f in zip(blocks, features, strict=True)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Features of every level, full resolution first."""
        levels = []
        for block in self.blocks:
            x = block(x)
            levels.append(x)
        return levels


class _Decoder(nn.Module):
    """``UpCat`` + squeeze-and-excitation per level, from the bottleneck up, then a 1×1 convolution to the classes."""

    def __init__(
        self,
        spatial_dims: int,
        features: Sequence[int],
        skips_per_level: int,
        out_channels: int,
        act: str | tuple,
        norm: str | tuple,
        dropout: float,
        se_reduction: int,
    ) -> None:
        super().__init__()
        levels = list(reversed(range(len(features) - 1)))  # from the bottleneck up
        self.ups = nn.ModuleList(
            UpCat(spatial_dims, features[i + 1], skips_per_level * features[i], features[i], act, norm, True, dropout)
            for i in levels
        )
        self.excitations = nn.ModuleList(
            ChannelSELayer(spatial_dims, features[i], r=max(1, min(se_reduction, features[i]))) for i in levels
        )
        self.head = Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1)

    def forward(self, bottleneck: Tensor, skips: list[Tensor]) -> Tensor:
        """Class logits; ``skips`` per level, full resolution first, each the concatenated skip features."""
        x = bottleneck
        level = len(skips)
        # indexing, not zip(strict=True) or reversed(): TorchScript scripts this loop (networks/export.py)
        for up, excitation in zip(self.ups, self.excitations):  # noqa: B905 - built to one length; no strict in TorchScript
            level -= 1
            x = excitation(up(x, skips[level]))
        return self.head(x)


class DoubleUNet(nn.Module):
    """Two stacked U-Nets with ASPP and squeeze-and-excitation (module docstring).

    Args:
        spatial_dims: 2 for scintigram crops.
        in_channels: input channels (1: counts).
        out_channels: classes including background (C + 1).
        features: channels per level, full resolution first, the bottleneck last; each level halves the size,
            so the input's sides must be divisible by 2 ** (len(features) - 1). The bottleneck's must be
            divisible by 4 (ASPP: four branches of a quarter each).
        act: activation of the convolution blocks (MONAI name or (name, args)).
        norm: normalisation of the convolution blocks and ASPP.
        dropout: dropout of the convolution blocks.
        se_reduction: squeeze-and-excitation channel reduction (the original: 8).
        deep_supervision: training forwards return both U-Nets' logits, stacked (module docstring).

    Raises:
        ValueError: for fewer than two levels or a bottleneck width not divisible by 4.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        dropout: float = 0.0,
        se_reduction: int = 8,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"features needs at least two levels, got {features}")
        if features[-1] % 4:
            raise ValueError(f"the bottleneck width must be divisible by 4 (ASPP), got {features[-1]}")
        self.deep_supervision = bool(deep_supervision)
        self.out_channels = int(out_channels)

        def aspp() -> SimpleASPP:
            return SimpleASPP(spatial_dims, features[-1], features[-1] // 4, norm_type=norm, acti_type=act)

        self.encoder1 = _Encoder(spatial_dims, in_channels, features, act, norm, dropout, None)
        self.aspp1 = aspp()
        self.decoder1 = _Decoder(spatial_dims, features, 1, out_channels, act, norm, dropout, se_reduction)
        self.encoder2 = _Encoder(spatial_dims, in_channels, features, act, norm, dropout, se_reduction)
        self.aspp2 = aspp()
        self.decoder2 = _Decoder(spatial_dims, features, 2, out_channels, act, norm, dropout, se_reduction)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of the second U-Net, or in training with deep supervision both U-Nets' stacked.

        Args:
            x: (B, in_channels, H, W) images.

        Returns:
            (B, C + 1, H, W) logits; training with ``deep_supervision``: (B, 2, C + 1, H, W), the second
            (final) U-Net's first.
        """
        levels1 = self.encoder1(x)
        first = self.decoder1(self.aspp1(levels1[-1]), levels1[:-1])
        # the first U-Net's foreground probability decides where the second one looks
        gate = 1.0 - torch.softmax(first, dim=1)[:, :1]
        levels2 = self.encoder2(x * gate)
        skips = [torch.cat((levels1[i], levels2[i]), dim=1) for i in range(len(levels2) - 1)]
        final = self.decoder2(self.aspp2(levels2[-1]), skips)
        if self.training and self.deep_supervision:
            return torch.stack((final, first), dim=1)
        return final
