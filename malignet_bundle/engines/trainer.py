"""Semi-supervised training as a MONAI ``SupervisedTrainer`` (thesis §4.2.5, eq. 33–35).

Each iteration hands the labeled batch to the trainer's semi-supervised method
(:mod:`malignet_bundle.semi_supervised`: supervised, ladder, mean teacher, …), which returns the loss terms
from one joint forward; the trainer optimises their weighted sum. Every term reaches
``engine.state.output`` under its own name so handlers (stats, MLflow) log them. The unlabeled loader
belongs to the trainer, which cycles it independently of the labeled one and lends its batches to the
method (:meth:`SemiSupervisedTrainer.next_unlabeled`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from ignite.metrics import Average, Metric
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from monai.utils.enums import CommonKeys as Keys
from monai.utils.misc import str2bool

from malignet_bundle.semi_supervised.base import SemiSupervisedMethod
from malignet_bundle.semi_supervised.ladder import Ladder

__all__ = [
    "WeightedLossSum",
    "loss_term_metrics",
    "prepare_detection_batch",
    "DetectionInferer",
    "SemiSupervisedTrainer",
    "DetectionEvaluator",
    "cycle",
]

TARGET_KEYS = ("boxes", "labels", "masks")
# Item identifiers carried into the targets when present, so evaluation can report per image and patient.
IDENTIFIER_KEYS = ("patient_id", "view", "image_path")


class WeightedLossSum:
    """Unified loss (thesis eq. 33–35): Σ λ_k · loss_k over the network's loss dict; λ defaults to 1.

    Args:
        weights: λ per loss name (``loss_classifier``, ``loss_ladder`` …); missing names weigh 1.
    """

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(weights or {})

    def __call__(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The weighted total."""
        return sum(self.weights.get(name, 1.0) * value for name, value in losses.items())


def loss_term_metrics(names: Mapping[str, float] | Sequence[str], prefix: str = "train_") -> dict[str, Metric]:
    """Epoch averages of each loss term as trainer metrics, so metric handlers (MLflow, stats) log every curve.

    MONAI engines register additional metrics only beside a key metric: use ``loss_term_metrics(["loss"])``
    (the weighted total) as the trainer's ``key_train_metric``.

    Args:
        names: loss names (or the ``loss_weights`` mapping, whose keys are used).
        prefix: metric name prefix, keeping training losses apart from validation metrics.
    """
    return {f"{prefix}{name}": Average(output_transform=lambda x, n=name: x[0][n]) for name in names}


def prepare_detection_batch(
    batchdata: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]] | None]:
    """Uncollated batch (``no_collation``) → (images, targets); targets None when items have no masks.

    Targets hold ``boxes``, ``labels``, ``masks`` and, when the items have them, the identifiers
    ``patient_id``, ``view`` and ``image_path`` (plain strings, for per-image and per-patient reports).
    """
    items = [batchdata] if isinstance(batchdata, Mapping) else list(batchdata)
    images = [torch.as_tensor(it["image"]).to(device=device, non_blocking=non_blocking) for it in items]
    if not all("masks" in it for it in items):
        return images, None
    targets = [
        {k: torch.as_tensor(it[k]).to(device=device, non_blocking=non_blocking) for k in TARGET_KEYS} for it in items
    ]
    for t, it in zip(targets, items, strict=True):
        t["masks"] = (t["masks"] > 0.5).to(torch.uint8)
        t["labels"] = t["labels"].long()
        t.update({k: str(it[k]) for k in IDENTIFIER_KEYS if k in it})
    return images, targets


def cycle(loader: Iterable) -> Iterator:
    """Iterate ``loader`` forever, re-shuffling on each pass (``set_epoch`` of a distributed sampler)."""
    epoch = 0
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the unlabeled data loader is empty")
        epoch += 1


class DetectionInferer(Inferer):
    """Evaluation forward of a detector that takes a list of images and returns a list of detections."""

    def __call__(self, inputs: list[torch.Tensor], network: Callable, *args: Any, **kwargs: Any) -> list[dict]:
        """Run ``network(inputs)``."""
        return network(inputs, *args, **kwargs)


class SemiSupervisedTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration asks a semi-supervised method for its loss terms.

    Takes MONAI's ``SupervisedTrainer`` arguments (``train_data_loader`` is the labeled loader; its batches
    are uncollated lists of dicts) plus:

    Args:
        method: the semi-supervised method (:class:`~malignet_bundle.semi_supervised.base.
            SemiSupervisedMethod`); None: :class:`~malignet_bundle.semi_supervised.ladder.Ladder`, which
            without an unlabeled loader trains supervised only.
        unlabeled_data_loader: loader of unlabeled images (cycled), lent to the method; None: no unlabeled
            images.
        unlabeled_batches: unlabeled batches per :meth:`next_unlabeled` call (with the two loaders' batch
            sizes, this sets the unlabeled-to-labeled ratio).
        max_grad_norm: clip the gradient norm to this before each step (None: no clipping). Mask R-CNN
            trained from scratch with Adam at 1e-3 (Table 11) otherwise has early mask-loss spikes.
        bf16_on_cpu: on a CPU device, run the forward under bfloat16 autocast (oneDNN's bf16 kernels on CPUs
            with AVX-512 BF16 or AMX; about 1.3x faster steps on an AMD EPYC, docs/BENCHMARKS.md). Off by
            default: whether it trains the same model is measured, not assumed. The command line's
            ``"true"``/``"false"`` strings are accepted.
        kwargs: everything ``SupervisedTrainer`` takes; ``loss_function`` receives the method's loss dict
            (use :class:`WeightedLossSum`), ``prepare_batch`` defaults to :func:`prepare_detection_batch`,
            ``inferer`` to :class:`DetectionInferer`. The inferer is held for MONAI's bundle interface (the
            ``train#inferer`` property that ``ConfigWorkflow`` requires of a training); a step's forward is
            the method's joint forward, which passes targets and unlabeled images no ``Inferer`` call takes.
    """

    def __init__(
        self,
        *args: Any,
        method: SemiSupervisedMethod | None = None,
        unlabeled_data_loader: Iterable | None = None,
        unlabeled_batches: int = 1,
        max_grad_norm: float | None = 10.0,
        bf16_on_cpu: bool | str = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("prepare_batch", prepare_detection_batch)
        kwargs.setdefault("inferer", DetectionInferer())
        kwargs.setdefault("decollate", False)
        super().__init__(*args, **kwargs)
        self.method = Ladder() if method is None else method
        self.unlabeled_data_loader = unlabeled_data_loader
        self.unlabeled_batches = int(unlabeled_batches)
        self.max_grad_norm = max_grad_norm
        self.bf16_on_cpu = str2bool(bf16_on_cpu)
        self._unlabeled: Iterator | None = None
        self.method.attach(self)

    def next_unlabeled(self) -> list[torch.Tensor]:
        """The images of the next ``unlabeled_batches`` batches of the cycling unlabeled loader.

        Returns:
            Images on the trainer's device; ``[]`` without an unlabeled loader.
        """
        return self._next_unlabeled(self.state.device)

    def _next_unlabeled(self, device: torch.device) -> list[torch.Tensor]:
        # a method of its own so that experiments/training_profile.py can time the unlabeled data loading
        if self.unlabeled_data_loader is None or self.unlabeled_batches <= 0:
            return []
        if self._unlabeled is None:
            self._unlabeled = cycle(self.unlabeled_data_loader)
        images: list[torch.Tensor] = []
        for _ in range(self.unlabeled_batches):
            batch_images, _ = self.prepare_batch(next(self._unlabeled), device, self.non_blocking)
            images.extend(batch_images)
        return images

    def _iteration(self, engine: SupervisedTrainer, batchdata: Sequence[Mapping[str, Any]]) -> list[dict]:
        """One step: the method's losses, weighted sum, backward, optimizer step (AMP on CUDA).

        Returns (and leaves in ``engine.state.output``) one dict per labeled image with ``loss``, every
        loss term and the method's logged values.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        if targets is None:
            raise ValueError("labeled batch without 'masks': is the labeled split annotated?")
        engine.state.output = {Keys.IMAGE: images, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        use_amp = engine.amp and engine.scaler is not None
        if use_amp:
            autocast = torch.autocast("cuda", **engine.amp_kwargs)
        else:
            cpu_bf16 = self.bf16_on_cpu and torch.device(engine.state.device).type == "cpu"
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16)
        with autocast:
            step = self.method.step(self, images, targets)
            losses = step.losses
            engine.state.output[Keys.PRED] = losses
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = engine.loss_function(losses)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if use_amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.unscale_(engine.optimizer)
            self._clip(engine)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self._clip(engine)
            engine.optimizer.step()
        terms = {name: torch.as_tensor(value).detach() for name, value in {**losses, **step.logged}.items()}
        # As MONAI's decollated output: one dict per labeled image, the batch losses replicated in each,
        # so the stock handlers (e.g. MLflow's ``from_engine(["loss"], first=True)``) read them unchanged.
        engine.state.output = [
            {Keys.IMAGE: image, Keys.LABEL: target, Keys.PRED: None, Keys.LOSS: loss.detach(), **terms}
            for image, target in zip(images, targets, strict=True)
        ]
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _clip(self, engine: SupervisedTrainer) -> None:
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_grad_norm)


class DetectionEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` for list-in, list-out detectors: uncollated batches, no decollation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prepare_batch", prepare_detection_batch)
        kwargs.setdefault("inferer", DetectionInferer())
        kwargs.setdefault("decollate", False)
        super().__init__(*args, **kwargs)
