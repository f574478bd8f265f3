"""Ladder feature pyramid network (thesis §4.2.1, eq. 28–30, Fig. 7).

A torchvision ``FeaturePyramidNetwork`` whose top-down pathway is also run as the noisy encoder of a ladder
network, with a denoising decoder per pyramid level. Per level l (C2…C5), three layers m = 0, 1, 2:

- z⁽⁰⁾ = C_l, the backbone output;
- z⁽¹⁾ = f⁽¹⁾(z⁽⁰⁾) + up(z⁽¹⁾ of level l+1), the 1×1 lateral merged with the top-down path (eq. 28, m = 0);
- z⁽²⁾ = f⁽²⁾(z⁽¹⁾) = P_l, the 3×3 output convolution (eq. 28, m = 1).

The noisy encoder shares every weight and adds Gaussian noise h to each z (eq. 29), with σ = ratio × the
per-sample standard deviation of that activation. The decoder reconstructs top-down within a level:
ẑ⁽²⁾ = g⁽²⁾(z̃⁽²⁾), ẑ⁽¹⁾ = g⁽¹⁾(z̃⁽¹⁾, ẑ⁽²⁾), ẑ⁽⁰⁾ = g⁽⁰⁾(z̃⁽⁰⁾, ẑ⁽¹⁾), each g a transposed convolution over the
concatenated inputs followed by batch normalisation. The ladder cost (eq. 30) is the mean over levels,
layers and elements of (z − ẑ)², with clean targets normalised per channel and without gradient (both
switchable, for ablation).

In training ``forward`` returns the noisy pyramid (what the RPN and heads see); in evaluation it is exactly
the parent FPN: no noise and no decoder.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork

__all__ = ["LadderFPN", "LadderDecoder", "gaussian_feature_noise"]


def gaussian_feature_noise(z: Tensor, ratio: float) -> Tensor:
    """Zero-mean Gaussian noise with σ = ``ratio`` × the per-sample standard deviation of ``z``.

    The moments are taken in float32 whatever ``z``'s dtype: under fp16 autocast E[z²] overflows (65504) for
    activations above ~256, and the one-pass variance E[z²] − E[z]² loses every digit in half precision.
    """
    if ratio <= 0:
        return torch.zeros_like(z)
    flat = z.detach().flatten(1).float()
    # one-pass moments: aten::std is several times slower on CPU and this runs 12 times a step
    variance = (flat * flat).mean(dim=1) - flat.mean(dim=1).square()
    sigma = variance.clamp(min=0).sqrt().view(-1, *([1] * (z.dim() - 1)))
    return torch.randn_like(z, dtype=torch.float32).mul_(ratio * sigma).to(z.dtype)


class LadderDecoder(nn.Module):
    """Denoising decoder of one pyramid level: g⁽²⁾, g⁽¹⁾, g⁽⁰⁾, each a transposed convolution + batch norm.

    Two ways to merge the noisy lateral z̃⁽ᵐ⁾ with the reconstruction ẑ⁽ᵐ⁺¹⁾ from above:

    - ``"concat"``: ẑ⁽ᵐ⁾ = BN(ConvT([z̃⁽ᵐ⁾, ẑ⁽ᵐ⁺¹⁾])), the literal reading of the thesis;
    - ``"ladder"``: ẑ⁽ᵐ⁾ = a ⊙ z̃⁽ᵐ⁾ + BN(ConvT(ẑ⁽ᵐ⁺¹⁾)), a per-channel linear combinator as in the ladder
      network (Rasmus et al. 2015). The transposed convolution then reads 256 channels instead of
      C_l + 256, which halves the decoder's cost (docs/BENCHMARKS.md).

    Args:
        in_channels: channels of C_l (the reconstruction target of g⁽⁰⁾).
        out_channels: pyramid channels (targets of g⁽¹⁾ and g⁽²⁾).
        kernel_size: kernel of g⁽²⁾ and g⁽¹⁾ (inverses of the 3×3 output conv); g⁽⁰⁾ inverts the 1×1 lateral
            and is always 1×1. 1 keeps the ladder's training overhead low.
        combinator: "concat" or "ladder", as above.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, combinator: str = "ladder") -> None:
        super().__init__()
        if combinator not in ("concat", "ladder"):
            raise ValueError(f"combinator must be 'concat' or 'ladder', got {combinator!r}")
        self.combinator = combinator
        pad = kernel_size // 2
        wide = 2 if combinator == "concat" else 1
        self.g2 = nn.Sequential(
            nn.ConvTranspose2d(out_channels, out_channels, kernel_size, padding=pad), nn.BatchNorm2d(out_channels)
        )
        self.g1 = nn.Sequential(
            nn.ConvTranspose2d(wide * out_channels, out_channels, kernel_size, padding=pad),
            nn.BatchNorm2d(out_channels),
        )
        g0_in = in_channels + out_channels if combinator == "concat" else out_channels
        self.g0 = nn.Sequential(nn.ConvTranspose2d(g0_in, in_channels, 1), nn.BatchNorm2d(in_channels))
        if combinator == "ladder":
            self.lateral1 = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
            self.lateral0 = nn.Parameter(torch.zeros(1, in_channels, 1, 1))

    def forward(self, z0: Tensor, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruct (ẑ⁽⁰⁾, ẑ⁽¹⁾, ẑ⁽²⁾) from the noisy (z̃⁽⁰⁾, z̃⁽¹⁾, z̃⁽²⁾) of the level."""
        r2 = self.g2(z2)
        if self.combinator == "concat":
            r1 = self.g1(torch.cat([z1, r2], dim=1))
            r0 = self.g0(torch.cat([z0, r1], dim=1))
        else:
            r1 = self.lateral1 * z1 + self.g1(r2)
            r0 = self.lateral0 * z0 + self.g0(r1)
        return r0, r1, r2


class LadderFPN(FeaturePyramidNetwork):
    """Drop-in replacement of torchvision's FPN that adds the ladder's noisy encoder and denoising decoders.

    Args:
        in_channels_list: channels of the backbone maps, shallowest first (ResNet-50: 256, 512, 1024, 2048).
        out_channels: pyramid channels.
        extra_blocks: as in torchvision (``LastLevelMaxPool`` for Mask R-CNN's P6).
        noise_ratio: σ of the injected noise relative to each activation's per-sample std (Table 11: 0.03).
        decoder_kernel_size: kernel of the two 256-channel decoder layers (1 or 3).
        stop_gradient_targets: clean targets are computed without gradient.
        normalize_targets: clean targets are normalised per channel over batch and space.
        upsample_mode: top-down upsampling, "nearest" as torchvision's FPN or "bicubic" as the thesis.
        combinator: how each decoder layer merges the noisy lateral with the layer above (see
            :class:`LadderDecoder`).
    """

    def __init__(
        self,
        in_channels_list: list[int],
        out_channels: int,
        extra_blocks: ExtraFPNBlock | None = None,
        noise_ratio: float = 0.03,
        decoder_kernel_size: int = 1,
        stop_gradient_targets: bool = True,
        normalize_targets: bool = True,
        upsample_mode: str = "nearest",
        combinator: str = "ladder",
    ) -> None:
        super().__init__(in_channels_list, out_channels, extra_blocks=extra_blocks)
        if upsample_mode not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"upsample_mode must be nearest, bilinear or bicubic, got {upsample_mode!r}")
        self.noise_ratio = float(noise_ratio)
        self.stop_gradient_targets = stop_gradient_targets
        self.normalize_targets = normalize_targets
        self.upsample_mode = upsample_mode
        self.decoders = nn.ModuleList(
            LadderDecoder(c, out_channels, decoder_kernel_size, combinator) for c in in_channels_list
        )

    def _upsample(self, x: Tensor, size: list[int]) -> Tensor:
        if self.upsample_mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.upsample_mode, align_corners=False)

    def _encode(self, feats: list[Tensor], noisy: bool) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Run the top-down pathway; returns (z⁽⁰⁾, z⁽¹⁾, z⁽²⁾) per level, shallowest first."""
        ratio = self.noise_ratio if noisy else 0.0
        levels: list[tuple[Tensor, Tensor, Tensor]] = []
        top_down: Tensor | None = None
        for idx in range(len(feats) - 1, -1, -1):
            z0 = feats[idx] + gaussian_feature_noise(feats[idx], ratio) if noisy else feats[idx]
            z1 = self.get_result_from_inner_blocks(z0, idx)
            if top_down is not None:
                z1 = z1 + self._upsample(top_down, list(z1.shape[-2:]))
            if noisy:
                z1 = z1 + gaussian_feature_noise(z1, ratio)
            top_down = z1
            z2 = self.get_result_from_layer_blocks(z1, idx)
            if noisy:
                z2 = z2 + gaussian_feature_noise(z2, ratio)
            levels.insert(0, (z0, z1, z2))
        return levels

    def _pyramid(self, levels: list[tuple[Tensor, Tensor, Tensor]], feats: list[Tensor], names: list[str]) -> dict:
        results = [z2 for _, _, z2 in levels]
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, list(names))
        return OrderedDict(zip(names, results, strict=True))

    def _target(self, z: Tensor) -> Tensor:
        z = z.float()  # the cost's statistics in float32 under autocast, like the noise's
        if self.stop_gradient_targets:
            z = z.detach()
        if self.normalize_targets and z.shape[0] * z.shape[2] * z.shape[3] > 1:
            z = F.batch_norm(z, None, None, training=True, eps=1e-5)  # per channel over batch and space
        return z

    def forward_with_ladder(self, x: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Noisy pyramid and ladder cost (eq. 30) for the backbone maps ``x`` (training)."""
        names, feats = list(x.keys()), list(x.values())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.stop_gradient_targets):
            clean = self._encode(feats, noisy=False)
        noisy = self._encode(feats, noisy=True)
        costs = []
        for decoder, clean_level, noisy_level in zip(self.decoders, clean, noisy, strict=True):
            for target, reconstruction in zip(clean_level, decoder(*noisy_level), strict=True):
                costs.append(F.mse_loss(reconstruction.float(), self._target(target)))
        return self._pyramid(noisy, feats, names), torch.stack(costs).mean()

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        """Noisy pyramid in training (no decoder), the plain FPN pyramid in evaluation."""
        if not self.training:
            if self.upsample_mode == "nearest":
                return super().forward(x)
            names, feats = list(x.keys()), list(x.values())
            return self._pyramid(self._encode(feats, noisy=False), feats, names)
        names, feats = list(x.keys()), list(x.values())
        return self._pyramid(self._encode(feats, noisy=True), feats, names)
