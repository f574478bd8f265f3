"""MaligNet (thesis ch. 4, Table 11): torchvision Mask R-CNN with a ladder FPN and global-feature classifier.

Assembled from torchvision's parts the way ``maskrcnn_resnet50_fpn`` is: ResNet-50 body,
``BackboneWithFPN``, ``RegionProposalNetwork``, ``RoIHeads`` with ``MultiScaleRoIAlign``, ``TwoMLPHead``
and the mask head. MaligNet swaps in :class:`~malignet_bundle.networks.lfpn.LadderFPN` for the FPN and
:mod:`~malignet_bundle.networks.global_features` for the box head. With ``ladder=False,
global_features=False`` it is plain torchvision Mask R-CNN (single-channel input), the thesis's baseline.

One training forward takes labeled images with targets, optionally teacher-labeled ("pseudo") images with
their targets, and unlabeled images without: the backbone and the pyramid run once over all of them; the RPN
and heads see each labeled group apart (the pseudo group's losses come back with ``_pseudo`` appended); the
ladder cost covers all of it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from malignet_bundle.networks.global_features import (
    GLOBAL_KEY,
    GlobalContextRoIPool,
    GlobalFeatureBoxHead,
    GlobalFeatureEmbedding,
)
from malignet_bundle.networks.lfpn import LadderFPN

__all__ = [
    "MaligNet",
    "BACKBONES",
    "LESION_ANCHOR_SIZES",
    "SUPERVISED_LOSS_KEYS",
    "LADDER_LOSS_KEY",
    "PSEUDO_SUFFIX",
]

# Anchors fitted to lesions in 320×320 chest crops of the synthetic data: lesion √area spans 11–32 px
# (5th–100th percentile, median 15), so P2…P6 carry 8…128 px anchors. The thesis's 32…512 (Table 11)
# follow Matterport Mask R-CNN's defaults at its own scale; set ``anchor_sizes`` for other data.
LESION_ANCHOR_SIZES = ((8,), (16,), (32,), (64,), (128,))
SUPERVISED_LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
LADDER_LOSS_KEY = "loss_ladder"
PSEUDO_SUFFIX = "_pseudo"  # appended to the RPN and head losses of the pseudo-labeled group
_RESNET_LAYERS = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
# channels of C2…C5 per torchvision ResNet; ResNet-18/34 exist for CPU-sized experiments only
BACKBONES = {
    "resnet50": (resnet50, (256, 512, 1024, 2048)),
    "resnet34": (resnet34, (64, 128, 256, 512)),
    "resnet18": (resnet18, (64, 128, 256, 512)),
}


class MaligNet(MaskRCNN):
    """ResNet-50 + ladder FPN + Mask R-CNN heads whose classifier sees global image features.

    Args:
        num_classes: lesion classes + 1 for background (thesis: 5).
        in_channels: image channels (1 for a scintigram).
        ladder: use the ladder FPN (semi-supervised denoising cost) instead of the plain FPN.
        global_features: concatenate the C5 global vector to every region in the class and box branches.
        noise_ratio: LFPN noise σ relative to each activation's per-sample std (Table 11: 0.03).
        decoder_kernel_size: kernel of the LFPN's 256-channel decoder layers.
        stop_gradient_targets: LFPN clean targets without gradient.
        normalize_targets: LFPN clean targets normalised per channel.
        upsample_mode: LFPN top-down upsampling ("nearest" like torchvision, "bicubic" like the thesis).
        ladder_combinator: how LFPN decoder layers merge lateral and top-down inputs ("concat" or "ladder").
        global_channels: size of the global feature vector.
        global_dropout: dropout probability on the global vector in training (0, the thesis: none).
        image_size: side of the (square) input the transform keeps images at (Table 11: 320).
        anchor_sizes: one tuple of sizes per pyramid level P2…P6.
        aspect_ratios: anchor aspect ratios (Table 11: 0.5, 1, 2).
        rpn_nms_thresh: RPN NMS IoU (Table 11: 0.7).
        rpn_batch_size_per_image: anchors sampled per image for the RPN loss (Table 11: 256).
        box_batch_size_per_image: regions sampled per image for the heads (Table 11: 200).
        box_score_thresh: minimum detection confidence at inference (Table 11: 0.7; evaluate with a lower
            one for AP and FROC).
        box_detections_per_img: most detections per image (Table 11: 100).
        backbone: ``"resnet50"`` (thesis) or a smaller ResNet (``"resnet34"``, ``"resnet18"``) for CPU-sized
            experiments such as the ``cpu`` profile of ``scripts/benchmark_ssl.py``.
        pyramid_channels: channels of every pyramid level and of the mask head (Table 11: 256).
        representation_size: width of the box head's two fully connected layers (Table 11: 1024).
        kwargs: passed on to torchvision's ``MaskRCNN`` (e.g. ``rpn_pre_nms_top_n_train``).
    """

    def __init__(
        self,
        num_classes: int = 5,
        in_channels: int = 1,
        ladder: bool = True,
        global_features: bool = True,
        noise_ratio: float = 0.03,
        decoder_kernel_size: int = 1,
        stop_gradient_targets: bool = True,
        normalize_targets: bool = True,
        upsample_mode: str = "nearest",
        ladder_combinator: str = "ladder",
        global_channels: int = 256,
        global_dropout: float = 0.0,
        image_size: int = 320,
        anchor_sizes: tuple[tuple[int, ...], ...] = LESION_ANCHOR_SIZES,
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        rpn_nms_thresh: float = 0.7,
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 200,
        box_score_thresh: float = 0.7,
        box_detections_per_img: int = 100,
        backbone: str = "resnet50",
        pyramid_channels: int = 256,
        representation_size: int = 1024,
        **kwargs: object,
    ) -> None:
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        make_body, channels = BACKBONES[backbone]
        body = make_body(weights=None, norm_layer=nn.BatchNorm2d)  # thesis: trained from scratch
        body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        in_channels_list = list(channels)
        body_with_fpn = BackboneWithFPN(
            body, _RESNET_LAYERS, in_channels_list, pyramid_channels, extra_blocks=LastLevelMaxPool()
        )
        if ladder:
            body_with_fpn.fpn = LadderFPN(
                in_channels_list,
                pyramid_channels,
                extra_blocks=LastLevelMaxPool(),
                noise_ratio=noise_ratio,
                decoder_kernel_size=decoder_kernel_size,
                stop_gradient_targets=stop_gradient_targets,
                normalize_targets=normalize_targets,
                upsample_mode=upsample_mode,
                combinator=ladder_combinator,
            )
        names = ["0", "1", "2", "3"]
        representation = representation_size
        if global_features:
            box_roi_pool: MultiScaleRoIAlign = GlobalContextRoIPool(names, output_size=7, sampling_ratio=2)
            box_head: nn.Module = GlobalFeatureBoxHead(
                pyramid_channels * 7 * 7, representation, global_channels, global_dropout
            )
            predictor_in = representation + global_channels
        else:
            box_roi_pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
            box_head, predictor_in = TwoMLPHead(pyramid_channels * 7 * 7, representation), representation
        anchors = AnchorGenerator(anchor_sizes, (tuple(aspect_ratios),) * len(anchor_sizes))
        super().__init__(
            body_with_fpn,
            num_classes=None,
            min_size=image_size,
            max_size=image_size,
            image_mean=[0.0] * in_channels,  # intensities are normalised by the bundle's transforms
            image_std=[1.0] * in_channels,
            rpn_anchor_generator=anchors,
            rpn_nms_thresh=rpn_nms_thresh,
            rpn_batch_size_per_image=rpn_batch_size_per_image,
            box_roi_pool=box_roi_pool,
            box_head=box_head,
            box_predictor=FastRCNNPredictor(predictor_in, num_classes),
            box_batch_size_per_image=box_batch_size_per_image,
            box_score_thresh=box_score_thresh,
            box_detections_per_img=box_detections_per_img,
            mask_head=MaskRCNNHeads(pyramid_channels, (pyramid_channels,) * 4, 1),
            mask_predictor=MaskRCNNPredictor(pyramid_channels, pyramid_channels, num_classes),
            **kwargs,
        )
        self.global_embedding = (
            GlobalFeatureEmbedding(in_channels_list[-1], global_channels) if global_features else None
        )
        self.num_classes = num_classes

    @property
    def uses_ladder(self) -> bool:
        """Whether the pyramid is a :class:`LadderFPN`."""
        return isinstance(self.backbone.fpn, LadderFPN)

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        unlabeled: list[Tensor] | None = None,
        pseudo: tuple[list[Tensor], list[dict[str, Tensor]]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: loss dict (``loss_ladder`` included with the ladder); evaluation: detections per image.

        Args:
            images: labeled images (C, H, W) in training, the images to segment in evaluation.
            targets: per labeled image ``boxes`` (N, 4), ``labels`` (N,), ``masks`` (N, H, W).
            unlabeled: images without targets (training only); they reach the ladder cost only.
            pseudo: images with targets from a teacher (training only): the same backbone pass, their own
                RPN and head losses, named with :data:`PSEUDO_SUFFIX` appended (``loss_mask_pseudo``, …), so
                a semi-supervised method weighs them apart from the labeled ones.
        """
        if not self.training:
            if unlabeled or pseudo:
                raise ValueError("unlabeled and pseudo-labeled images are only used in training")
            if self.global_embedding is None:
                return super().forward(images)
            return self._detect(images)
        if images and targets is None:
            raise ValueError("targets are required for labeled images in training")
        unlabeled = unlabeled or []
        pseudo_images, pseudo_targets = pseudo if pseudo is not None else ([], None)
        if pseudo_images and pseudo_targets is None:
            raise ValueError("pseudo-labeled images need their targets")
        if not images and not unlabeled and not pseudo_images:
            raise ValueError("no images")
        if not unlabeled and not pseudo_images and not self.uses_ladder and self.global_embedding is None:
            return super().forward(images, targets)  # exactly torchvision Mask R-CNN

        # (images batched and padded by the transform, their targets, loss-name suffix) per labeled group
        groups = []
        if images:
            groups.append((*self.transform(images, targets), ""))
        if pseudo_images:
            groups.append((*self.transform(pseudo_images, pseudo_targets), PSEUDO_SUFFIX))
        unlabeled_tensors = self.transform(unlabeled)[0].tensors if unlabeled and self.uses_ladder else None
        if not groups and unlabeled_tensors is None:
            raise ValueError("an unlabeled-only batch needs the ladder (ladder=True)")
        parts = [image_list.tensors for image_list, _, _ in groups]
        batch = _concat_padded(parts + ([] if unlabeled_tensors is None else [unlabeled_tensors]))
        c_maps = self.backbone.body(batch)
        losses: dict[str, Tensor] = {}
        if self.uses_ladder:
            pyramid, losses[LADDER_LOSS_KEY] = self.backbone.fpn.forward_with_ladder(c_maps)
        else:
            pyramid = self.backbone.fpn(c_maps)
        start = 0
        for image_list, group_targets, suffix in groups:
            stop = start + image_list.tensors.shape[0]
            sizes = image_list.tensors.shape[-2:]
            features = OrderedDict((k, _crop_to(v[start:stop], sizes, batch.shape[-2:])) for k, v in pyramid.items())
            proposals, proposal_losses = self.rpn(image_list, features, group_targets)
            head_features = self._with_global(features, c_maps["3"][start:stop])
            _, detector_losses = self.roi_heads(head_features, proposals, image_list.image_sizes, group_targets)
            losses.update({name + suffix: value for name, value in detector_losses.items()})
            losses.update({name + suffix: value for name, value in proposal_losses.items()})
            start = stop
        return losses

    def _with_global(self, pyramid: dict[str, Tensor], c5: Tensor) -> dict[str, Tensor]:
        if self.global_embedding is None:
            return pyramid
        return OrderedDict([*pyramid.items(), (GLOBAL_KEY, self.global_embedding(c5))])

    def _detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _ = self.transform(images)
        c_maps = self.backbone.body(image_list.tensors)
        pyramid = self.backbone.fpn(c_maps)
        proposals, _ = self.rpn(image_list, pyramid)
        detections, _ = self.roi_heads(self._with_global(pyramid, c_maps["3"]), proposals, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def _concat_padded(tensors: list[Tensor]) -> Tensor:
    """Concatenate image batches along N, zero-padding bottom/right to the largest H and W."""
    if len(tensors) == 1:
        return tensors[0]
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    return torch.cat([F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2])) for t in tensors], dim=0)


def _crop_to(feature: Tensor, labeled_size: torch.Size, batch_size: torch.Size) -> Tensor:
    """Crop a pyramid map computed on the padded joint batch back to the labeled batch's padded extent."""
    if tuple(labeled_size) == tuple(batch_size):
        return feature
    scale_h = feature.shape[-2] / batch_size[0]
    scale_w = feature.shape[-1] / batch_size[1]
    return feature[..., : max(1, round(labeled_size[0] * scale_h)), : max(1, round(labeled_size[1] * scale_w))]
