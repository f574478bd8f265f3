"""Supervised training: the labeled batch alone (the thesis's Mask R-CNN baseline, ``configs/baseline.json``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from malignet_bundle.semi_supervised.base import JointBatch, SemiSupervisedMethod, StepOutput, joint_forward

if TYPE_CHECKING:
    from malignet_bundle.engines.trainer import SemiSupervisedTrainer

__all__ = ["Supervised"]


class Supervised(SemiSupervisedMethod):
    """No unlabeled images: the network's supervised losses on the labeled batch.

    With a ladder network the ladder cost still covers the labeled images (it needs no labels).
    """

    def step(
        self, trainer: SemiSupervisedTrainer, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> StepOutput:
        """``network(images, targets)``.

        Args:
            trainer: the running trainer.
            images: the labeled images.
            targets: their targets.

        Returns:
            The network's losses.
        """
        return StepOutput(joint_forward(trainer.network, JointBatch(images, targets)))
