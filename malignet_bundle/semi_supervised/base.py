"""The seam: what a semi-supervised method implements, and the one joint forward every method uses.

A method turns one labeled batch into the loss terms of one iteration. It may draw unlabeled images from
the trainer (:meth:`~malignet_bundle.engines.trainer.SemiSupervisedTrainer.next_unlabeled`), label some with
a model of its own, and hand everything to :func:`joint_forward` as a :class:`JointBatch`; it never calls
the network itself, so a new method does not copy the forward and a new network head serves every method.
The trainer sums the returned losses with its ``loss_function`` (λ per name from ``loss_weights``) and
reports ``logged`` values beside them without optimising them.

A new method subclasses :class:`SemiSupervisedMethod`, implements :meth:`~SemiSupervisedMethod.step` (and
:meth:`~SemiSupervisedMethod.attach` for per-iteration work such as a teacher update), and is chosen in a
config by setting the top-level ``semi_supervised`` id to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.transforms import Compose
from torch import Tensor

if TYPE_CHECKING:
    from malignet_bundle.engines.trainer import SemiSupervisedTrainer

__all__ = [
    "JointBatch",
    "StepOutput",
    "SemiSupervisedMethod",
    "EMATeacherMethod",
    "joint_forward",
    "uses_ladder",
    "unwrap",
    "seeded_augmentation",
    "ema_teacher",
]


@dataclass
class JointBatch:
    """The images of one training forward, by role.

    Attributes:
        images: labeled images (C, H, W).
        targets: their ``boxes``, ``labels``, ``masks``.
        unlabeled: images without targets; the network uses them for its ladder cost, if it has one.
        pseudo_images: images labeled by a teacher; their RPN and head losses come back apart, named with
            :data:`~malignet_bundle.networks.malignet.PSEUDO_SUFFIX` appended.
        pseudo_targets: the teacher's targets of ``pseudo_images``.
    """

    images: list[Tensor]
    targets: list[dict[str, Tensor]]
    unlabeled: list[Tensor] = field(default_factory=list)
    pseudo_images: list[Tensor] = field(default_factory=list)
    pseudo_targets: list[dict[str, Tensor]] = field(default_factory=list)


@dataclass
class StepOutput:
    """What a method returns for one iteration.

    Attributes:
        losses: loss terms; the trainer's ``loss_function`` weighs and sums them, and reports each.
        logged: values reported beside the losses (every iteration, the same names) but not optimised.
    """

    losses: dict[str, Tensor]
    logged: dict[str, Tensor] = field(default_factory=dict)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper.

    Args:
        network: a network, wrapped or not.

    Returns:
        The wrapped module, or ``network`` itself when it is not a wrapper.
    """
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return network.module if isinstance(network, wrappers) else network


def uses_ladder(network: torch.nn.Module) -> bool:
    """Whether a network has a ladder cost that reads unlabeled images.

    Args:
        network: a MaligNet (or any detector), possibly wrapped in ``DistributedDataParallel``.

    Returns:
        Its ``uses_ladder`` flag; False for networks without one.
    """
    return bool(getattr(unwrap(network), "uses_ladder", False))


def joint_forward(network: torch.nn.Module, batch: JointBatch) -> dict[str, Tensor]:
    """The training forward of every method: one call of ``network`` over all the images of ``batch``.

    MaligNet (and the baseline, which is MaligNet without ladder and global features) runs its backbone
    once over labeled, pseudo-labeled and unlabeled images together, so batch-norm statistics and the
    ladder cost see all of them, and a ``DistributedDataParallel`` wrapper sees one forward and one backward
    per iteration. A batch with labeled images only is the plain ``network(images, targets)`` call.

    Args:
        network: the student, possibly wrapped in ``DistributedDataParallel``, in training mode.
        batch: the images by role.

    Returns:
        The network's loss dict: the supervised terms, ``loss_ladder`` with the ladder, and the pseudo group's
        terms with ``_pseudo`` appended when there is one.
    """
    kwargs: dict[str, object] = {}
    if batch.unlabeled:
        kwargs["unlabeled"] = batch.unlabeled
    if batch.pseudo_images:
        kwargs["pseudo"] = (batch.pseudo_images, batch.pseudo_targets)
    return network(batch.images, batch.targets, **kwargs)


class SemiSupervisedMethod(ABC):
    """One semi-supervised method: the loss terms of an iteration from its labeled batch.

    A loss term a method adds to the network's (e.g. ``loss_unsupervised``) needs a weight in
    ``loss_weights`` to reach the trainer's epoch metrics, hence MLflow; missing, it weighs 1.

    Attributes:
        logged_names: the keys of :attr:`StepOutput.logged`, present at every iteration (a config can make
            them epoch metrics with ``loss_term_metrics``).
    """

    logged_names: Sequence[str] = ()

    def attach(self, trainer: SemiSupervisedTrainer) -> None:  # noqa: B027 - optional hook, no-op by default
        """Register the method's event handlers on ``trainer``; the trainer calls it once, when it is built.

        Args:
            trainer: the trainer that will call :meth:`step`.
        """

    @abstractmethod
    def step(
        self, trainer: SemiSupervisedTrainer, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> StepOutput:
        """The loss terms of one iteration; called by the trainer inside its autocast region.

        Args:
            trainer: the running trainer (its ``network``, ``state`` and unlabeled batches).
            images: the labeled images, on the trainer's device.
            targets: their targets.

        Returns:
            The losses to weigh and optimise, and values to log beside them.
        """


def seeded_augmentation(augmentation: Callable | Sequence[Callable] | None, seed: int | None) -> Callable | None:
    """The teacher–student methods' random perturbation, its random state seeded once per process.

    Args:
        augmentation: a callable (used as given), a sequence of MONAI transforms (composed), or None.
        seed: the random state of a composed augmentation; None draws one, offset by the process's rank so
            that data-parallel processes perturb differently.

    Returns:
        The augmentation to call on a batch, or None.
    """
    if augmentation is None or callable(augmentation):
        composed = augmentation
    else:
        composed = Compose(list(augmentation))
    if isinstance(composed, Compose):
        if seed is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            seed = int(torch.randint(0, 2**30, ()).item()) + rank
        composed.set_random_state(seed=seed)
    return composed


class EMATeacherMethod(SemiSupervisedMethod):
    """A teacher–student method whose teacher is an exponential moving average of the student.

    It keeps the teacher's life cycle in one place: the teacher is a copy of the student at a fresh run's first
    iteration (after initial or pretrained weights were loaded into the student; a resumed run restores the
    teacher from its checkpoint instead), then ignite's EMA update after every iteration with the momentum
    :meth:`momentum` gives, then rank 0's buffers broadcast under data parallelism. A subclass sets
    :attr:`momentum_state` and calls :meth:`init_teacher` in its constructor, defines :meth:`momentum` and
    :meth:`step`, and may add checks at the run's start (:meth:`check_run`).

    Attributes:
        momentum_state: the ``engine.state`` attribute ignite's ``EMAHandler`` reads its momentum from.
    """

    momentum_state: str = "teacher_ema_momentum"

    def init_teacher(self, network: torch.nn.Module, decay: float) -> None:
        """Create the EMA handler and the teacher (:func:`ema_teacher`) as ``self.ema`` and ``self.teacher``.

        Args:
            network: the student.
            decay: the EMA decay.
        """
        self.ema, self.teacher = ema_teacher(network, decay)

    @abstractmethod
    def momentum(self, iteration: int) -> float:
        """The EMA momentum (1 − α) of the teacher update after ``iteration`` (1-based)."""

    def check_run(self, engine: Engine) -> None:  # noqa: B027 - optional hook, no-op by default
        """Warn about a run the method cannot teach in (called when the trainer starts).

        Args:
            engine: the trainer.
        """

    def attach(self, trainer: SemiSupervisedTrainer) -> None:
        """Teacher ← student at a fresh run's first iteration; EMA update (then rank-0 buffers) after each step.

        Args:
            trainer: the trainer running this method.
        """
        trainer.add_event_handler(Events.STARTED, self.check_run)
        trainer.add_event_handler(Events.ITERATION_STARTED(once=1), self._copy_student)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._set_momentum)
        self.ema.attach(trainer, name=self.momentum_state, warn_if_exists=False, event=Events.ITERATION_COMPLETED)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._share_buffers)

    def _copy_student(self, engine: Engine) -> None:
        self.teacher.load_state_dict(unwrap(engine.network).state_dict())

    def _set_momentum(self, engine: Engine) -> None:
        setattr(engine.state, self.momentum_state, self.momentum(engine.state.iteration))

    def _share_buffers(self, engine: Engine) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for buffer in self.teacher.buffers():
                dist.broadcast(buffer, src=0)


def ema_teacher(network: torch.nn.Module, decay: float) -> tuple[EMAHandler, torch.nn.Module]:
    """Ignite's EMA of ``network`` as a teacher: a detached deep copy in evaluation mode, without gradients.

    ``handle_buffers="update"`` averages the normalisation statistics too, so the teacher's whole state is an
    average of the student's.

    Args:
        network: the student (unwrapped by ignite if data-parallel).
        decay: the EMA decay (ignite's momentum is ``1 - decay``).

    Returns:
        The handler to attach to the trainer, and the teacher it updates.
    """
    ema = EMAHandler(network, momentum=1.0 - float(decay), handle_buffers="update")
    teacher: torch.nn.Module = ema.ema_model
    teacher.requires_grad_(False)
    return ema, teacher
