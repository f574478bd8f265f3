"""Chest detector (thesis §4.1): one chest box per whole-body view, in front of MaligNet.

The thesis used SSD with an ImageNet VGG-16. Here it is MONAI's 2D ``RetinaNetDetector`` on a ResNet-18 FPN
trained from scratch: MONAI's detection stack is what the rest of the bundle is built on (ATSS matching,
hard-negative sampling, box coder), it runs in 2D unchanged, and a chest box on a 512×128 view is an easy
enough target that a 138 M-parameter VGG-16 without pretrained weights (none can be downloaded here) would
only cost time.

Boxes here are (x0, y0, x1, y1) in view pixels, x = column, as everywhere in the bundle. MONAI's detection
boxes follow array axes (row first); the conversion happens only inside this module.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.nets import resnet
from torch import Tensor, nn
from torchvision.ops import box_iou

__all__ = ["ChestDetector", "box_jaccard"]

logger = logging.getLogger(__name__)


def _xyxy_to_monai(boxes: Tensor) -> Tensor:
    return boxes[..., [1, 0, 3, 2]]


def box_jaccard(a: Tensor, b: Tensor) -> Tensor:
    """Jaccard index (IoU) of paired boxes (N, 4) and (N, 4), (x0, y0, x1, y1)."""
    return box_iou(a, b).diagonal()


class ChestDetector(nn.Module):
    """Whole-body view → its chest box.

    Args:
        spatial_size: (H, W) views are resized to before the network (a quarter of the 1024×256 matrix:
            the chest is then about 45×50 pixels, and one pixel 9 mm).
        base_anchor_shapes: anchor (height, width) at the finest level (stride 8), in resized pixels; the
            coarser levels scale them by 2 and 4.
        backbone_layers: ResNet block counts (default ResNet-18).
    """

    def __init__(
        self,
        spatial_size: tuple[int, int] = (256, 64),
        base_anchor_shapes: tuple[tuple[int, int], ...] = ((12, 12), (10, 15), (15, 10)),
        backbone_layers: tuple[int, int, int, int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        backbone = resnet.ResNet(
            block=resnet.ResNetBlock,
            layers=list(backbone_layers),
            block_inplanes=resnet.get_inplanes(),
            spatial_dims=2,
            n_input_channels=1,
            conv1_t_stride=2,
            conv1_t_size=7,
        )
        # Levels at strides 8, 16, 32: a stride-4 level would triple the cost of the 4-layer heads for nothing.
        features = resnet_fpn_feature_extractor(backbone, 2, returned_layers=[2, 3])
        anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=(1, 2, 4), base_anchor_shapes=base_anchor_shapes)
        network = RetinaNet(
            2, num_classes=1, num_anchors=len(base_anchor_shapes), feature_extractor=features, size_divisible=32
        )
        self.detector = RetinaNetDetector(network, anchors)
        self.detector.set_target_keys(box_key="boxes", label_key="labels")
        self.detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
        self.detector.set_hard_negative_sampler(
            batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16
        )
        self.detector.set_box_selector_parameters(
            score_thresh=0.0, topk_candidates_per_level=50, nms_thresh=0.3, detections_per_img=1
        )

    def _resize(self, images: Tensor) -> Tensor:
        return F.interpolate(images, size=self.spatial_size, mode="area")

    def forward(self, images: Tensor, boxes: Tensor | None = None) -> dict[str, Tensor] | Tensor:
        """Training: loss dict (classification, box regression); evaluation: (B, 4) chest boxes.

        Args:
            images: (B, 1, H, W) views in the anterior orientation, intensities scaled to about 0–1.
            boxes: (B, 4) ground-truth chest boxes (x0, y0, x1, y1) in view pixels (training).
        """
        height, width = images.shape[-2:]
        scale = torch.tensor([self.spatial_size[1] / width, self.spatial_size[0] / height] * 2, device=images.device)
        resized = self._resize(images)
        if self.training:
            if boxes is None:
                raise ValueError("chest boxes are required in training")
            targets = [
                {
                    "boxes": _xyxy_to_monai(b.view(1, 4) * scale),
                    "labels": torch.zeros(1, dtype=torch.long, device=images.device),
                }
                for b in boxes
            ]
            return self.detector(resized, targets)
        with torch.no_grad():  # MONAI's NMS deep-copies boxes, which tensors in a graph refuse
            detections = self.detector(resized)
        out = torch.zeros((len(detections), 4), device=images.device)
        for i, det in enumerate(detections):
            if len(det["boxes"]) == 0:
                logger.warning("chest detector found no chest in view %d; using the whole view", i)
                out[i] = torch.tensor([0.0, 0.0, float(width), float(height)])
            else:
                out[i] = _xyxy_to_monai(det["boxes"][0].float()) / scale
        out[:, 0::2] = out[:, 0::2].clamp(0, float(width))
        out[:, 1::2] = out[:, 1::2].clamp(0, float(height))
        return out
