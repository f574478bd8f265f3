"""Mean teacher for Mask R-CNN: an EMA teacher labels unlabeled crops, boxes, classes and masks, for the student.

The recipe is Unbiased Teacher's (Liu et al. 2021) on top of the mean teacher (Tarvainen & Valpola 2017):

- **Burn-in.** For the first ``burn_in`` iterations the student trains on labeled crops only (plus the ladder
  cost on unlabeled ones when the network has the ladder) and the teacher follows it exactly (EMA momentum
  1), so validation and ``model.pt`` during burn-in show the student's progress and the teacher starts from
  the burnt-in student, as Unbiased Teacher copies it at the end of burn-in.
- **Pseudo-labels.** After burn-in the teacher (evaluation mode, no gradient) predicts on the unlabeled
  crop as the unlabeled loader delivers it, weakly augmented (``train#unlabeled_preprocessing``); detections
  scoring at least ``threshold`` (0.7) become targets: class, mask (teacher mask probability > 0.5) and the
  box of that mask, as ground-truth boxes are re-derived from masks.
- **Strong augmentation.** The student sees the same crop strongly augmented: ``strong_augmentation`` (MONAI
  dictionary transforms on ``image`` and ``masks``; ``configs/mean_teacher.json``: affine, intensity, noise,
  blur, cut-out) moves the pseudo-masks with the image, and boxes are derived from the moved masks, so
  targets stay on their lesions whatever the geometry. Cut-out blanks the masks too: a lesion it erases
  stops being a target instead of teaching the student to see a lesion where there is none.
- **Losses.** The pseudo-labeled crops share the student's forward with the labeled (and unlabeled) ones
  (:func:`~malignet_bundle.semi_supervised.base.joint_forward`); their RPN and head losses come back apart
  and the ones in ``pseudo_losses`` are summed into ``loss_unsupervised``, weighted by
  ``loss_weights#loss_unsupervised`` (Unbiased Teacher: 4). Defaults: objectness, classifier and mask on;
  RPN and box regression off, as in Unbiased Teacher, because a detection's confidence says how sure the
  teacher is of the class, not where the box edges are, so regressing onto pseudo-boxes trains the student
  on the teacher's localisation errors. The mask stays on: it is the output this bundle exists for, its
  pseudo-target is a per-pixel map whose errors sit at the lesion's rim, and no published teacher–student
  detector trains masks, so the benchmark measures it (``--pseudo_losses#loss_mask false`` turns it off).
- **Teacher update.** After each optimizer step (``ITERATION_COMPLETED``, so under torchrun after the
  all-reduced step, identically on every rank) ignite's ``EMAHandler`` sets teacher = α·teacher +
  (1 − α)·student, α = ``decay`` (Unbiased Teacher: 0.9996), batch-norm statistics included; under
  ``torch.distributed`` the teacher's buffers are then broadcast from rank 0, because each rank's student
  updates its batch-norm statistics on its own shard.

Evaluation, ``model.pt``, checkpoints (``model`` is the teacher, ``student`` the student), resume and
export use the teacher (``configs/mean_teacher.json``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Engine, Events
from monai.utils import convert_to_tensor
from monai.utils.misc import str2bool
from torch import Tensor

from malignet_bundle.networks.malignet import PSEUDO_SUFFIX, SUPERVISED_LOSS_KEYS
from malignet_bundle.semi_supervised.base import (
    EMATeacherMethod,
    JointBatch,
    StepOutput,
    joint_forward,
    seeded_augmentation,
    uses_ladder,
)
from malignet_bundle.transforms.geometry import BoxesFromMasksd

if TYPE_CHECKING:
    from malignet_bundle.engines.trainer import SemiSupervisedTrainer

__all__ = [
    "MeanTeacher",
    "UNSUPERVISED_LOSS_KEY",
    "DEFAULT_PSEUDO_LOSSES",
    "predict_pseudo_targets",
    "augment_pseudo_labeled",
]

logger = logging.getLogger(__name__)

UNSUPERVISED_LOSS_KEY = "loss_unsupervised"
# Unbiased Teacher's choice (module docstring): no regression onto pseudo-boxes; mask on, to be measured
DEFAULT_PSEUDO_LOSSES = {
    "loss_objectness": True,
    "loss_rpn_box_reg": False,
    "loss_classifier": True,
    "loss_box_reg": False,
    "loss_mask": True,
}
MOMENTUM_STATE = "teacher_ema_momentum"  # engine.state attribute ignite's EMAHandler reads each update


@torch.no_grad()
def predict_pseudo_targets(
    teacher: torch.nn.Module,
    images: Sequence[Tensor],
    threshold: float = 0.7,
    mask_threshold: float = 0.5,
    max_per_image: int | None = None,
) -> list[dict[str, Tensor]]:
    """The teacher's detections scoring above ``threshold`` on ``images``, as targets.

    Args:
        teacher: a Mask R-CNN (MaligNet); run in evaluation mode without gradient, its RoI heads' score
            threshold set to ``threshold`` and, with ``max_per_image``, their detections per image to it for
            the call (torchvision keeps the highest-scored after NMS).
        images: (C, H, W) images on the teacher's device.
        threshold: detections must score above it.
        mask_threshold: mask probability above which a pixel belongs to the lesion.
        max_per_image: keep at most this many of an image's detections, the highest-scored; None: all.

    Returns:
        Per image ``masks`` (N, H, W) uint8, ``labels`` (N,) int64 and ``scores`` (N,), on the images' device.
    """
    heads = teacher.roi_heads
    was_training = teacher.training
    previous = heads.score_thresh, heads.detections_per_img
    heads.score_thresh = threshold
    if max_per_image is not None:
        heads.detections_per_img = min(int(max_per_image), heads.detections_per_img)
    teacher.eval()
    try:
        detections = teacher(list(images))
    finally:
        heads.score_thresh, heads.detections_per_img = previous
        teacher.train(was_training)
    # the RoI heads have already dropped every detection at or below the threshold
    return [
        {
            "masks": (det["masks"][:, 0] > mask_threshold).to(torch.uint8),
            "labels": det["labels"].long(),
            "scores": det["scores"].float(),
        }
        for det in detections
    ]


def augment_pseudo_labeled(
    image: Tensor,
    target: Mapping[str, Tensor],
    transform: Callable[[dict], Mapping[str, Any]] | None,
    min_pixels: int = 4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Apply ``transform`` to an image and its pseudo-masks together; boxes from the transformed masks.

    Args:
        image: (C, H, W) crop the teacher labeled.
        target: its ``masks`` (N, H, W) and ``labels`` (N,).
        transform: dictionary transform on ``image`` and ``masks`` (masks as float channels: geometric ones
            must use nearest-neighbour interpolation and pad with 0, cut-out fill 0); None: unchanged.
        min_pixels: a lesion with fewer mask pixels after the transform (moved out, erased) is dropped.

    Returns:
        The transformed image and its targets: ``boxes`` (N', 4) float32 (x0, y0, x1, y1, exclusive),
        ``labels`` (N',) int64, ``masks`` (N', H', W') uint8, on ``image``'s device.
    """
    masks = torch.as_tensor(target["masks"]).to(device=image.device, dtype=torch.float32)
    # MONAI's spatial transforms need a channel: a crop without pseudo-lesions carries one empty mask along
    placeholder = masks.shape[0] == 0
    if placeholder:
        masks = masks.new_zeros((1, *image.shape[-2:]))
    item: Mapping[str, Any] = {"image": image, "masks": masks}
    if transform is not None:
        # data augmentation in full precision, even inside the trainer's autocast region (blur is a conv)
        with torch.autocast(image.device.type, enabled=False):
            item = transform(dict(item))
    out_image = convert_to_tensor(item["image"], track_meta=False).to(image.dtype)
    out_masks = (convert_to_tensor(item["masks"], track_meta=False) > 0.5).to(torch.uint8)
    if placeholder:
        out_masks = out_masks[:0]
    labels = torch.as_tensor(target["labels"]).to(image.device).long()
    kept = BoxesFromMasksd("masks", min_pixels=min_pixels)({"masks": out_masks, "labels": labels})
    return out_image, {
        "boxes": kept["boxes"].to(image.device),
        "labels": kept["labels"],
        "masks": kept["masks"],
    }


class MeanTeacher(EMATeacherMethod):
    """Teacher–student training for Mask R-CNN (module docstring); ``configs/mean_teacher.json``.

    Args:
        network: the student (possibly wrapped in ``DistributedDataParallel``); the teacher starts as its copy.
        decay: EMA decay α of the teacher (Unbiased Teacher: 0.9996).
        burn_in: iterations of supervised training (teacher = student) before pseudo-labels are used.
        threshold: lowest teacher detection score that becomes a pseudo-target (Unbiased Teacher: 0.7).
        mask_threshold: teacher mask probability above which a pixel is in the pseudo-mask.
        pseudo_losses: which of the pseudo-labeled group's loss terms enter ``loss_unsupervised`` (name →
            on/off; see :data:`DEFAULT_PSEUDO_LOSSES`, the default).
        strong_augmentation: the student's augmentation: a dictionary transform (or a sequence of them,
            composed) on ``image`` and ``masks``; None: the student sees the teacher's crop.
        keep_empty: keep unlabeled crops where the teacher finds nothing above ``threshold``, as all-background
            targets (Unbiased Teacher keeps them: they teach background; its focal loss, absent here, offsets
            the imbalance). False drops them from the pseudo-labeled group.
        min_pixels: pseudo-lesions with fewer mask pixels after augmentation are dropped.
        max_pseudo_lesions: at most this many pseudo-lesions per unlabeled crop, the teacher's highest-scored;
            None: every detection above ``threshold``. A cap holds a teacher whose count of confident
            detections runs away (confirmation bias) near the number of lesions a crop can hold.
        seed: seed of ``strong_augmentation``'s random state; None: drawn from torch's generator (seeded by
            the bundle's ``set_determinism``) plus the process rank, so ranks augment differently.

    Raises:
        ValueError: for a decay outside (0, 1), a negative burn-in, a threshold outside [0, 1], a cap below
            1, an unknown loss name or no pseudo-label loss switched on.
    """

    logged_names = ("pseudo_lesions", *(name + PSEUDO_SUFFIX for name in SUPERVISED_LOSS_KEYS))
    momentum_state = MOMENTUM_STATE

    def __init__(
        self,
        network: torch.nn.Module,
        decay: float = 0.9996,
        burn_in: int = 2000,
        threshold: float = 0.7,
        mask_threshold: float = 0.5,
        pseudo_losses: Mapping[str, bool | str] | None = None,
        strong_augmentation: Callable | Sequence[Callable] | None = None,
        keep_empty: bool | str = True,
        min_pixels: int = 4,
        max_pseudo_lesions: int | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if int(burn_in) < 0:
            raise ValueError(f"burn_in must be >= 0, got {burn_in}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if max_pseudo_lesions is not None and int(max_pseudo_lesions) < 1:
            raise ValueError(f"max_pseudo_lesions must be >= 1 or None, got {max_pseudo_lesions}")
        switches = {**DEFAULT_PSEUDO_LOSSES, **(pseudo_losses or {})}
        unknown = sorted(set(switches) - set(SUPERVISED_LOSS_KEYS))
        if unknown:
            raise ValueError(f"unknown pseudo-label losses {unknown}; choose among {list(SUPERVISED_LOSS_KEYS)}")
        self.pseudo_losses = tuple(name for name in SUPERVISED_LOSS_KEYS if str2bool(switches[name]))
        if not self.pseudo_losses:
            raise ValueError("no pseudo-label loss is on: switch on at least one in pseudo_losses")
        self.decay = float(decay)
        self.burn_in = int(burn_in)
        self.threshold = float(threshold)
        self.mask_threshold = float(mask_threshold)
        self.keep_empty = str2bool(keep_empty)
        self.min_pixels = int(min_pixels)
        self.max_pseudo_lesions = None if max_pseudo_lesions is None else int(max_pseudo_lesions)
        self.strong_augmentation = seeded_augmentation(strong_augmentation, seed)
        # "update": batch-norm statistics averaged too, as Unbiased Teacher averages the whole state
        self.init_teacher(network, self.decay)

    def attach(self, trainer: SemiSupervisedTrainer) -> None:
        """The EMA teacher's handlers (:class:`EMATeacherMethod`), and a log line when burn-in ends.

        Args:
            trainer: the trainer running this method.
        """
        super().attach(trainer)
        if self.burn_in > 0:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(once=self.burn_in), self._log_burn_in_over)

    def momentum(self, iteration: int) -> float:
        """The EMA momentum (1 − α) of the teacher update after ``iteration``.

        Args:
            iteration: the trainer's iteration just completed (1-based).

        Returns:
            1 during burn-in (the teacher copies the student), else ``1 - decay``.
        """
        return 1.0 if iteration <= self.burn_in else 1.0 - self.decay

    def check_run(self, engine: Engine) -> None:
        """Warn when burn-in covers the whole run or no unlabeled loader is given.

        Args:
            engine: the trainer.
        """
        total = (engine.state.max_epochs or 0) * (engine.state.epoch_length or 0)
        if self.burn_in >= total:
            logger.warning(
                "mean teacher: burn-in of %d iterations covers the whole training (%d iterations): the teacher "
                "never labels anything; lower burn_in (mean_teacher_burn_in)",
                self.burn_in,
                total,
            )
        if getattr(engine, "unlabeled_data_loader", None) is None:
            logger.warning("mean teacher without an unlabeled loader: training on labeled crops only")

    def _log_burn_in_over(self, engine: Engine) -> None:
        logger.info(
            "mean teacher: burn-in over after %d iterations; the teacher labels unlabeled crops at score >= %g",
            engine.state.iteration,
            self.threshold,
        )

    def step(
        self, trainer: SemiSupervisedTrainer, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> StepOutput:
        """Labeled losses, the ladder cost if any, and after burn-in the pseudo-labeled group's losses.

        Args:
            trainer: the running trainer (network, iteration, unlabeled images).
            images: the labeled images.
            targets: their targets.

        Returns:
            The network's supervised losses (and ``loss_ladder``), ``loss_unsupervised`` (0 during burn-in);
            logged: every pseudo-labeled loss term (on or off; 0 during burn-in) and ``pseudo_lesions``, the
            mean number of pseudo-lesions per unlabeled crop.
        """
        network = trainer.network
        teaching = trainer.state.iteration > self.burn_in
        weak = trainer.next_unlabeled() if teaching or uses_ladder(network) else []
        pseudo_images: list[Tensor] = []
        pseudo_targets: list[dict[str, Tensor]] = []
        if teaching and weak:
            predicted = predict_pseudo_targets(
                self.teacher, weak, self.threshold, self.mask_threshold, self.max_pseudo_lesions
            )
            for image, target in zip(weak, predicted, strict=True):
                strong, strong_target = augment_pseudo_labeled(image, target, self.strong_augmentation, self.min_pixels)
                if len(strong_target["labels"]) or self.keep_empty:
                    pseudo_images.append(strong)
                    pseudo_targets.append(strong_target)
        # the strongly augmented crops reach the ladder cost in the same pass; without them, the weak ones do
        unlabeled = [] if pseudo_images else weak
        raw = joint_forward(network, JointBatch(images, targets, unlabeled, pseudo_images, pseudo_targets))
        zero = torch.zeros((), device=images[0].device)
        pseudo = {name: raw.get(name + PSEUDO_SUFFIX, zero) for name in SUPERVISED_LOSS_KEYS}
        losses = {name: value for name, value in raw.items() if not name.endswith(PSEUDO_SUFFIX)}
        losses[UNSUPERVISED_LOSS_KEY] = sum((pseudo[name] for name in self.pseudo_losses), zero)
        lesions = sum(len(t["labels"]) for t in pseudo_targets)
        logged = {name + PSEUDO_SUFFIX: value.detach() for name, value in pseudo.items()}
        logged["pseudo_lesions"] = torch.tensor(lesions / max(1, len(weak)) if teaching else 0.0)
        return StepOutput(losses, logged)
