"""Global image features for the classifier frontend (thesis §4.2.3, Fig. 8).

A reader names a hot spot from the whole scan: one rib lesion alone is likely trauma, ten scattered ones
metastases. MaligNet gives the box classifier that context: C5 is embedded by a convolution, pooled to one
vector per image, and that vector is concatenated to every region's features before the class and box
branches. The mask branch does not get it.

Torchvision's ``RoIHeads`` calls ``box_roi_pool → box_head → box_predictor`` with tensors only, so the
per-image vector travels as a ``"global"`` entry of the feature dict (``MultiScaleRoIAlign`` ignores
names it does not pool) and as extra columns of the pooled tensor; :class:`GlobalFeatureBoxHead` splits them
again. No torchvision code is overridden.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

__all__ = ["GlobalFeatureEmbedding", "GlobalContextRoIPool", "GlobalFeatureBoxHead", "GLOBAL_KEY"]

GLOBAL_KEY = "global"


class GlobalFeatureEmbedding(nn.Module):
    """C5 → 1×1 conv + BN + ReLU → global average pool: one ``out_channels`` vector per image.

    Args:
        in_channels: channels of C5 (2048 for ResNet-50).
        out_channels: size of the global feature vector.
    """

    def __init__(self, in_channels: int = 2048, out_channels: int = 256) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
        )
        self.out_channels = out_channels

    def forward(self, c5: Tensor) -> Tensor:
        """(N, C5, h, w) → (N, out_channels)."""
        return self.embed(c5).mean(dim=(2, 3))


class GlobalContextRoIPool(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` that appends each region's image-level vector to its flattened pooled features.

    A subclass because torchvision's ``FasterRCNN`` accepts only ``MultiScaleRoIAlign`` as its box pooler;
    the pooling itself is an inner ``MultiScaleRoIAlign`` (TorchScript cannot compile ``super()`` calls).

    Args:
        featmap_names: pyramid levels to pool from.
        output_size: pooled size.
        sampling_ratio: RoIAlign sampling ratio.
        global_key: feature-dict key holding the (N, G) global vectors.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int = 7,
        sampling_ratio: int = 2,
        global_key: str = GLOBAL_KEY,
    ) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.pool = MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio)
        self.global_key = global_key

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """(R, C·s·s + G): pooled region features, flattened, then the global vector of the region's image."""
        pooled = self.pool(x, boxes, image_shapes).flatten(1)
        # the image of each region, built from the boxes' own shapes so that a traced graph (ONNX) keeps the
        # number of regions dynamic; a list of Python lengths would freeze it at the traced count
        image_index = torch.cat([torch.full_like(b[:, 0], i, dtype=torch.int64) for i, b in enumerate(boxes)])
        return torch.cat([pooled, x[self.global_key][image_index]], dim=1)


class GlobalFeatureBoxHead(nn.Module):
    """Torchvision's ``TwoMLPHead`` on the region features, then the global vector concatenated (Fig. 8).

    Args:
        in_channels: flattened size of the pooled region features (256 · 7 · 7).
        representation_size: width of the two fully connected layers.
        global_channels: size of the global vector appended by :class:`GlobalContextRoIPool`.
        global_dropout: dropout probability on the global vector in training (0: none). The thesis has
            none; with few labeled images a per-image vector can be memorised as the image's identity
            rather than read as context, which dropout makes costly.
    """

    def __init__(
        self, in_channels: int, representation_size: int, global_channels: int, global_dropout: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= global_dropout < 1.0:
            raise ValueError(f"global_dropout must be in [0, 1), got {global_dropout}")
        self.mlp = TwoMLPHead(in_channels, representation_size)
        # no module at all without dropout: the same graph, random stream and state as before it existed
        self.global_dropout = nn.Dropout(global_dropout) if global_dropout > 0 else nn.Identity()
        self.region_channels = in_channels
        self.out_channels = representation_size + global_channels

    def forward(self, x: Tensor) -> Tensor:
        """(R, C·s·s + G) → (R, representation_size + G)."""
        region, global_vector = x[:, : self.region_channels], x[:, self.region_channels :]
        return torch.cat([self.mlp(region), self.global_dropout(global_vector)], dim=1)
