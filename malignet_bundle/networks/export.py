"""Inference-only MaligNet for TorchScript export: no ladder decoder, no noise, no training branches.

In evaluation the ladder FPN *is* torchvision's FPN with the same weights, so the exported model carries a
plain ``FeaturePyramidNetwork`` and never the decoders. Everything else (transform, ResNet body, RPN,
RoI heads with the global-feature box head) is the trained model's own modules.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from malignet_bundle.atomic_io import write_atomic
from malignet_bundle.networks.global_features import GLOBAL_KEY, GlobalFeatureEmbedding
from malignet_bundle.networks.lfpn import LadderFPN
from malignet_bundle.networks.malignet import MaligNet

__all__ = ["MaligNetPredictor", "export_torchscript"]


class MaligNetPredictor(nn.Module):
    """The evaluation path of a :class:`MaligNet`, written so that ``torch.jit.script`` compiles it.

    Args:
        model: a (trained) MaligNet; its modules are shared, not copied, except the pyramid.
    """

    def __init__(self, model: MaligNet) -> None:
        super().__init__()
        fpn = model.backbone.fpn
        if isinstance(fpn, LadderFPN):
            if fpn.upsample_mode != "nearest":
                raise ValueError(f"export supports nearest top-down upsampling, model uses {fpn.upsample_mode!r}")
            plain = FeaturePyramidNetwork([256, 512, 1024, 2048], 256, extra_blocks=LastLevelMaxPool())
            plain.load_state_dict({k: v for k, v in fpn.state_dict().items() if not k.startswith("decoders.")})
            fpn = plain
        self.transform = model.transform
        self.body = model.backbone.body
        self.fpn = fpn
        self.use_global = model.global_embedding is not None
        self.global_key = GLOBAL_KEY
        self.global_embedding = model.global_embedding if self.use_global else GlobalFeatureEmbedding(1, 1)
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        self.eval()

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections (``boxes``, ``labels``, ``scores``, ``masks``) per (C, H, W) image."""
        original_sizes: list[tuple[int, int]] = []
        for img in images:
            original_sizes.append((img.shape[-2], img.shape[-1]))
        image_list, _ = self.transform(images, None)
        c_maps = self.body(image_list.tensors)
        pyramid = self.fpn(c_maps)
        proposals, _ = self.rpn(image_list, pyramid, None)
        head_features: dict[str, Tensor] = OrderedDict()
        for name, value in pyramid.items():
            head_features[name] = value
        if self.use_global:
            head_features[self.global_key] = self.global_embedding(c_maps["3"])
        detections, _ = self.roi_heads(head_features, proposals, image_list.image_sizes, None)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def export_torchscript(model: MaligNet, path: str | os.PathLike) -> torch.jit.ScriptModule:
    """Script the inference path of ``model`` and save it atomically to ``path``; returns the scripted module."""
    scripted = torch.jit.script(MaligNetPredictor(model).cpu().eval())
    write_atomic(path, lambda tmp: scripted.save(str(tmp)))
    return scripted
