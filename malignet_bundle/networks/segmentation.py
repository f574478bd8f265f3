"""A dense segmentation network (U-Net, Double U-Net) behind the bundle's detector interface.

The trainer, the semi-supervised seam and the evaluators talk to MaligNet and Mask R-CNN in one way: a
training forward ``network(images, targets, unlabeled=…, pseudo=(images, targets))`` returns named loss terms
(:func:`~malignet_bundle.semi_supervised.base.joint_forward`), an evaluation forward ``network(images)``
returns lesions (``boxes``, ``labels``, ``scores``, ``masks``). :class:`SemanticSegmenter` gives a network that
maps (B, 1, H, W) crops to (B, C + 1, H, W) class logits that same interface, so the semantic baselines of the
related bone-scan work train through the same trainer and are scored by the same validation, operating
threshold, evaluation and reports as the detectors (``configs/segmentation.json``):

- training: one forward over the labeled crops and the pseudo group's crops together; ``loss_segmentation``
  is the supervised loss (MONAI ``DiceCELoss``) of the labeled crops against their class label maps
  (:class:`~malignet_bundle.transforms.label_maps.InstanceLabelMapd`); a pseudo group whose targets are class
  probabilities (a mean teacher's) gives ``loss_segmentation_pseudo``, the mean squared error between the
  softmax of the student and those probabilities (Tarvainen & Valpola 2017). Images without any target
  (``unlabeled``) are not forwarded: a U-Net has no cost for them.
- evaluation: whole-crop inference; the argmax label map, and its connected regions as lesions scored by
  their mean foreground probability (:func:`~malignet_bundle.metrics.label_instances.semantic_detections`);
  each image's ``label_map`` rides along for the pixel protocol (:mod:`~malignet_bundle.metrics.pixel`).

A network with deep supervision (MONAI ``DynUNet``, :class:`~malignet_bundle.networks.double_unet.DoubleUNet`)
returns (B, K, C + 1, H, W) in training, the final head first; every head is trained (MONAI
``DeepSupervisionLoss``), the consistency and the predictions use the final one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import Tensor, nn

from malignet_bundle.metrics.label_instances import semantic_detections
from malignet_bundle.transforms.label_maps import LABEL_MAP_KEY, instance_label_map

__all__ = ["SEGMENTATION_LOSS_KEY", "SOFT_TARGET_KEY", "PSEUDO_SUFFIX", "SemanticSegmenter"]

SEGMENTATION_LOSS_KEY = "loss_segmentation"
SOFT_TARGET_KEY = "probabilities"  # a pseudo-target of class probabilities (C + 1, H, W)
PSEUDO_SUFFIX = "_pseudo"  # as MaligNet names its pseudo group's terms (networks/malignet.PSEUDO_SUFFIX)


class SemanticSegmenter(nn.Module):
    """A dense class-logit network with the bundle's detector interface (module docstring).

    Args:
        network: (B, in_channels, H, W) → (B, C + 1, H, W) class logits, or in training with deep supervision
            (B, K, C + 1, H, W), the final head first (MONAI ``BasicUNet``, ``DynUNet``,
            :class:`~malignet_bundle.networks.double_unet.DoubleUNet`).
        num_classes: classes including background, C + 1 (as ``network_def#num_classes`` of ``train.json``).
        loss: supervised loss of logits (B, C + 1, H, W) against label maps (B, 1, H, W); None: MONAI
            ``DiceCELoss`` with one-hot labels and softmax, background included.
        deep_supervision_weight_mode: MONAI ``DeepSupervisionLoss`` weighting of stacked heads (``"same"``:
            every head alike, as the Double U-Net trains both of its outputs; ``"exp"``: halved per head).
        box_score_thresh: lowest lesion score an evaluation forward returns (named as Mask R-CNN's box score
            threshold, so ``evaluate.json``'s ranking floor sets it too).
        min_lesion_pixels: regions of the label map with fewer pixels are not returned as lesions.
        box_detections_per_img: at most this many lesions per crop, the highest scoring (named and sized as
            Mask R-CNN's).
    """

    def __init__(
        self,
        network: nn.Module,
        num_classes: int,
        loss: nn.Module | None = None,
        deep_supervision_weight_mode: str = "same",
        box_score_thresh: float = 0.0,
        min_lesion_pixels: int = 1,
        box_detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        self.network = network
        self.num_classes = int(num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background too: at least 2, got {num_classes}")
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True) if loss is None else loss
        self.deep_supervision_loss = DeepSupervisionLoss(self.loss, weight_mode=deep_supervision_weight_mode)
        self.box_score_thresh = float(box_score_thresh)
        self.min_lesion_pixels = int(min_lesion_pixels)
        self.box_detections_per_img = int(box_detections_per_img)

    def _heads(self, batch: Tensor) -> list[Tensor]:
        """The network's logits as a list of (B, C + 1, H, W) heads, the final one first."""
        logits = self.network(batch)
        heads = list(logits.unbind(dim=1)) if logits.dim() == batch.dim() + 1 else [logits]
        if heads[0].shape[1] != self.num_classes:
            raise ValueError(
                f"the network returns {heads[0].shape[1]} channels, but num_classes is {self.num_classes} "
                "(background included): set its out_channels to the class map's classes + 1"
            )
        return heads

    @staticmethod
    def _label_map(target: Mapping[str, Any], image: Tensor) -> Tensor:
        """(1, H, W) int64 labels: the target's ``label_map``, else painted from its instances."""
        if LABEL_MAP_KEY in target:
            label_map = torch.as_tensor(target[LABEL_MAP_KEY], device=image.device).long()
            return label_map if label_map.dim() == 3 else label_map[None]
        masks = torch.as_tensor(target["masks"], device=image.device)
        return instance_label_map(masks, target["labels"], image.shape[-2:])[None]

    def probabilities(self, images: Sequence[Tensor]) -> Tensor:
        """Softmax class probabilities of the final head, in the network's current mode.

        Args:
            images: (C, H, W) crops of one size.

        Returns:
            (B, C + 1, H, W) float32 probabilities.
        """
        return torch.softmax(self._heads(torch.stack(list(images)))[0].float(), dim=1)

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[Mapping[str, Any]] | None = None,
        unlabeled: Sequence[Tensor] | None = None,
        pseudo: tuple[Sequence[Tensor], Sequence[Mapping[str, Tensor]]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: the loss terms; evaluation: each crop's lesions and label map.

        Args:
            images: (C, H, W) crops of one size.
            targets: in training, per labeled crop ``label_map`` (1, H, W), or ``masks`` and ``labels``.
            unlabeled: crops without targets; not forwarded (a U-Net has no cost for them).
            pseudo: (crops, targets) of a teacher; targets hold ``probabilities`` (C + 1, H, W).

        Returns:
            Training: ``loss_segmentation`` and, with a pseudo group, ``loss_segmentation_pseudo``.
            Evaluation: per crop ``boxes``, ``labels``, ``scores``, ``masks`` (N, 1, H, W) and ``label_map``
            (H, W) (:func:`~malignet_bundle.metrics.label_instances.semantic_detections`).

        Raises:
            ValueError: training without targets, or a pseudo target without ``probabilities``.
        """
        if not self.training:
            logits = self._heads(torch.stack(list(images)))[0]
            return semantic_detections(
                logits, self.box_score_thresh, self.min_lesion_pixels, self.box_detections_per_img
            )
        if targets is None:
            raise ValueError("a training forward needs targets (label maps, or masks and labels)")
        pseudo_images, pseudo_targets = (list(pseudo[0]), list(pseudo[1])) if pseudo else ([], [])
        if any(SOFT_TARGET_KEY not in t for t in pseudo_targets):
            raise ValueError(f"pseudo targets of a segmentation network are class {SOFT_TARGET_KEY!r} maps")
        labeled = len(images)
        heads = self._heads(torch.stack([*images, *pseudo_images]))
        labels = torch.stack([self._label_map(t, image) for t, image in zip(targets, images, strict=True)])
        labeled_heads = [head[:labeled].float() for head in heads]
        # one head: DeepSupervisionLoss is the plain loss (weight 1)
        losses = {SEGMENTATION_LOSS_KEY: self.deep_supervision_loss(labeled_heads, labels)}
        if pseudo_images:
            soft = torch.stack([torch.as_tensor(t[SOFT_TARGET_KEY]) for t in pseudo_targets]).float()
            student = torch.softmax(heads[0][labeled:].float(), dim=1)
            losses[SEGMENTATION_LOSS_KEY + PSEUDO_SUFFIX] = F.mse_loss(student, soft.to(student.device))
        return losses
