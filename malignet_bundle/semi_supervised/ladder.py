"""The ladder (thesis §4.2.5, eq. 33–35): unlabeled images join the labeled ones in one forward.

The ladder cost itself lives in the network (:class:`~malignet_bundle.networks.lfpn.LadderFPN`); this
method only feeds it: each iteration takes ``unlabeled_batches`` batches from the trainer's cycling
unlabeled loader. Without an unlabeled loader, or on a network without the ladder FPN (which would ignore
unlabeled images, so none are loaded), it trains exactly as
:class:`~malignet_bundle.semi_supervised.supervised.Supervised`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from malignet_bundle.semi_supervised.base import (
    JointBatch,
    SemiSupervisedMethod,
    StepOutput,
    joint_forward,
    uses_ladder,
)

if TYPE_CHECKING:
    from malignet_bundle.engines.trainer import SemiSupervisedTrainer

__all__ = ["Ladder"]


class Ladder(SemiSupervisedMethod):
    """Labeled + unlabeled images in one forward; the network's ladder cost (``loss_ladder``) covers both."""

    def step(
        self, trainer: SemiSupervisedTrainer, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> StepOutput:
        """``network(images, targets, unlabeled=…)`` with the trainer's next unlabeled images.

        Args:
            trainer: the running trainer (source of the unlabeled images).
            images: the labeled images.
            targets: their targets.

        Returns:
            The network's losses, ``loss_ladder`` included when the network has the ladder.
        """
        unlabeled = trainer.next_unlabeled() if uses_ladder(trainer.network) else []
        batch = JointBatch(images, targets, unlabeled=unlabeled)
        return StepOutput(joint_forward(trainer.network, batch))
