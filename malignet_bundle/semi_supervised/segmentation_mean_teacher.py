"""Mean teacher for semantic segmentation (Tarvainen & Valpola 2017), the recipe of the semantic bone-scan work.

The student is a :class:`~malignet_bundle.networks.segmentation.SemanticSegmenter` (U-Net, Double U-Net); the
teacher is an exponential moving average of it (``configs/segmentation_mean_teacher.json``):

- **Consistency.** Each iteration takes the trainer's unlabeled crops and perturbs each twice,
  independently: one copy for the teacher, one for the student (``perturbation``: MONAI intensity transforms
  on ``image``, e.g. Gaussian noise and intensity scaling; they must not move pixels, because the two
  predictions are compared pixel by pixel). The teacher's softmax on its copy (evaluation mode, no gradient)
  is the target of the student's softmax on its own: mean squared error, ``loss_consistency``.
- **Weight and ramp-up.** ``loss_consistency`` = w(t) · MSE with the sigmoid ramp-up of the original,
  w(t) = ``consistency_weight`` · exp(−5 (1 − t / ``ramp_up``)²) until ``ramp_up`` iterations, then
  ``consistency_weight``; the early teacher is no better than the student, so its targets count little.
- **One forward.** The student's copies join the labeled crops in the student's one forward as the pseudo
  group of :func:`~malignet_bundle.semi_supervised.base.joint_forward`, their targets the teacher's class
  probabilities; the network returns the mean squared error as ``loss_segmentation_pseudo``.
- **Teacher update.** After each optimizer step ignite's ``EMAHandler`` sets teacher = α_t · teacher +
  (1 − α_t) · student with α_t = min(1 − 1 / (t + 1), ``decay``) (the original's schedule: the early teacher
  follows the student closely, then averages over about 1 / (1 − decay) steps), buffers included; under
  ``torch.distributed`` the teacher's buffers are then broadcast from rank 0.

Validation, ``model.pt`` and the checkpoint's ``model`` are the teacher, the student is saved beside it
(``student``), as in :mod:`~malignet_bundle.semi_supervised.mean_teacher`, the detectors' teacher–student.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from ignite.engine import Engine
from monai.utils import convert_to_tensor
from torch import Tensor

from malignet_bundle.networks.segmentation import PSEUDO_SUFFIX, SEGMENTATION_LOSS_KEY, SOFT_TARGET_KEY
from malignet_bundle.semi_supervised.base import (
    EMATeacherMethod,
    JointBatch,
    StepOutput,
    joint_forward,
    seeded_augmentation,
    unwrap,
)

if TYPE_CHECKING:
    from malignet_bundle.engines.trainer import SemiSupervisedTrainer

__all__ = ["CONSISTENCY_LOSS_KEY", "sigmoid_ramp_up", "SegmentationMeanTeacher"]

logger = logging.getLogger(__name__)

CONSISTENCY_LOSS_KEY = "loss_consistency"
MOMENTUM_STATE = "segmentation_teacher_ema_momentum"  # engine.state attribute ignite's EMAHandler reads


def sigmoid_ramp_up(iteration: int, length: int) -> float:
    """The mean teacher's consistency ramp-up factor, exp(−5 (1 − t / length)²), 1 from ``length`` on.

    Args:
        iteration: the current iteration t (1-based; 0 gives the smallest factor, exp(−5)).
        length: iterations of the ramp-up; 0 or less: no ramp-up (always 1).

    Returns:
        The factor in (0, 1].
    """
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(iteration, 0), length) / length
    return float(math.exp(-5.0 * phase * phase))


class SegmentationMeanTeacher(EMATeacherMethod):
    """EMA teacher, consistency of softmax outputs on perturbed unlabeled crops (module docstring).

    Args:
        network: the student (a :class:`~malignet_bundle.networks.segmentation.SemanticSegmenter`, possibly
            wrapped in ``DistributedDataParallel``); the teacher starts as its copy.
        decay: the teacher's EMA decay, reached once 1 − 1 / (t + 1) exceeds it (the original: 0.99 during
            ramp-up, 0.999 after; segmentation mean teachers commonly 0.99).
        consistency_weight: the consistency weight after ramp-up.
        ramp_up: iterations of the sigmoid ramp-up (0: the full weight from the start).
        perturbation: intensity perturbation of an unlabeled crop: a dictionary transform (or a sequence of
            them, composed) on ``image``; applied separately to the teacher's and the student's copy. None:
            both see the crop as loaded.
        seed: seed of ``perturbation``'s random state; None: drawn from torch's generator (seeded by the
            bundle's ``set_determinism``) plus the process rank, so ranks perturb differently.

    Raises:
        ValueError: for a decay outside (0, 1), a negative consistency weight or ramp-up.
    """

    logged_names = ("consistency_mse", "consistency_weight")
    momentum_state = MOMENTUM_STATE

    def __init__(
        self,
        network: torch.nn.Module,
        decay: float = 0.99,
        consistency_weight: float = 0.1,
        ramp_up: int = 1000,
        perturbation: Callable | Sequence[Callable] | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if float(consistency_weight) < 0:
            raise ValueError(f"consistency_weight must be >= 0, got {consistency_weight}")
        if int(ramp_up) < 0:
            raise ValueError(f"ramp_up must be >= 0 iterations, got {ramp_up}")
        if not hasattr(unwrap(network), "probabilities"):
            raise ValueError(
                f"{type(unwrap(network)).__name__} has no class probabilities: the segmentation mean teacher "
                "needs a SemanticSegmenter (configs/segmentation.json before segmentation_mean_teacher.json)"
            )
        self.decay = float(decay)
        self.consistency_weight = float(consistency_weight)
        self.ramp_up = int(ramp_up)
        self.perturbation = seeded_augmentation(perturbation, seed)
        # "update": normalisation statistics averaged too (the Double U-Net's ASPP has batch norm)
        self.init_teacher(network, self.decay)

    def weight(self, iteration: int) -> float:
        """The consistency weight w(t) at ``iteration`` (module docstring).

        Args:
            iteration: the trainer's current iteration (1-based).

        Returns:
            ``consistency_weight`` times the sigmoid ramp-up factor.
        """
        return self.consistency_weight * sigmoid_ramp_up(iteration, self.ramp_up)

    def momentum(self, iteration: int) -> float:
        """The EMA momentum 1 − α_t of the teacher update after ``iteration``.

        Args:
            iteration: the iteration just completed (1-based).

        Returns:
            max(1 / (t + 1), 1 − decay).
        """
        return max(1.0 / (iteration + 1), 1.0 - self.decay)

    def check_run(self, engine: Engine) -> None:
        """Warn when no unlabeled loader is given (no consistency term then).

        Args:
            engine: the trainer.
        """
        if getattr(engine, "unlabeled_data_loader", None) is None:
            logger.warning("segmentation mean teacher without an unlabeled loader: no consistency term")

    def _perturb(self, image: Tensor) -> Tensor:
        if self.perturbation is None:
            return image
        # in full precision, even inside the trainer's autocast region
        with torch.autocast(image.device.type, enabled=False):
            out = self.perturbation({"image": image})["image"]
        return convert_to_tensor(out, track_meta=False).to(device=image.device, dtype=image.dtype)

    def step(
        self, trainer: SemiSupervisedTrainer, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> StepOutput:
        """The supervised loss of the labeled crops and the weighted consistency on the unlabeled ones.

        Args:
            trainer: the running trainer (network, iteration, unlabeled crops).
            images: the labeled crops.
            targets: their targets.

        Returns:
            ``loss_segmentation`` and ``loss_consistency`` (w(t) · MSE; 0 without unlabeled crops); logged:
            ``consistency_mse`` (unweighted) and ``consistency_weight`` (w(t)).
        """
        unlabeled = trainer.next_unlabeled()
        student_views: list[Tensor] = []
        soft_targets: list[dict[str, Tensor]] = []
        if unlabeled:
            teacher_views = [self._perturb(image) for image in unlabeled]
            student_views = [self._perturb(image) for image in unlabeled]
            with torch.no_grad():
                probabilities = self.teacher.probabilities(teacher_views)
            soft_targets = [{SOFT_TARGET_KEY: p} for p in probabilities]
        raw = joint_forward(trainer.network, JointBatch(images, targets, [], student_views, soft_targets))
        zero = torch.zeros((), device=images[0].device)
        mse = raw.pop(SEGMENTATION_LOSS_KEY + PSEUDO_SUFFIX, zero)
        weight = self.weight(trainer.state.iteration)
        losses = {**raw, CONSISTENCY_LOSS_KEY: weight * mse}
        logged = {"consistency_mse": mse.detach(), "consistency_weight": torch.tensor(weight)}
        return StepOutput(losses, logged)
