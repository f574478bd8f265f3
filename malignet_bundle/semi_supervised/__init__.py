"""Semi-supervised methods behind one interface, each chosen by a bundle config.

Every method is one module here and one subclass of :class:`~malignet_bundle.semi_supervised.base.
SemiSupervisedMethod`; the trainer (:class:`~malignet_bundle.engines.trainer.SemiSupervisedTrainer`, a MONAI
``SupervisedTrainer``) asks it for the loss terms of each iteration and does the rest (autocast, weighted
sum, backward, clipping, optimizer step, outputs). Every method reaches the network through
:func:`~malignet_bundle.semi_supervised.base.joint_forward`, the one joint labeled + pseudo-labeled +
unlabeled forward that MaligNet and the Mask R-CNN baseline share.

- :mod:`.supervised`: labeled batches only (``configs/baseline.json``).
- :mod:`.ladder`: labeled + unlabeled batches, the ladder cost on both (``configs/train.json``).
- :mod:`.self_training`: offline pseudo-labels from a trained model added to the labeled data
  (``configs/self_training.json``); the step stays the one the other configs chose.
- :mod:`.mean_teacher`: an EMA teacher labels weakly augmented unlabeled crops for the student on strongly
  augmented ones (``configs/mean_teacher.json``); on a network with the ladder FPN both costs train.
- :mod:`.segmentation_mean_teacher`: the mean teacher of the pixel-level networks: the EMA teacher's class
  probabilities on one perturbation of an unlabeled crop are the targets of the student on another
  (``configs/segmentation_mean_teacher.json`` after ``configs/segmentation.json``).
- :mod:`.selection`: method names (per network) → config overrides (the MONAI Label train task's ``method``).
"""

import importlib
from types import ModuleType


def __getattr__(name: str) -> ModuleType:
    """Import modules on first use (``malignet_bundle.semi_supervised.<module>`` in configs)."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from e
