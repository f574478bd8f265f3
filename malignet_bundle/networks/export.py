"""Inference-only networks for deployment: TorchScript and ONNX, no ladder decoder, no noise, no training branches.

In evaluation the ladder FPN *is* torchvision's FPN with the same weights, so the deployed network carries a
plain ``FeaturePyramidNetwork`` (of the trained model's own widths: ResNet-50 with a 256-channel pyramid,
ResNet-18 with a 64-channel one, ...) and never the decoders. Everything else (transform, ResNet body, RPN,
RoI heads with the global-feature box head) is the trained model's own modules.

:class:`MaligNetPredictor` keeps :class:`~malignet_bundle.networks.malignet.MaligNet`'s state-dict names
(``backbone.body.*``, ``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``, ``global_embedding.*``) and drops the
ladder's ``backbone.fpn.decoders.*`` when loading, so a training's ``model.pt`` loads into it as it is. That
is what lets ``configs/inference.json`` define it as ``network_def`` (:func:`inference_network`) and MONAI's
``python -m monai.bundle ckpt_export network_def`` script it from ``models/model.pt``.

ONNX (:func:`export_onnx`) goes through PyTorch's TorchScript-based exporter (``dynamo=False``), the path
torchvision's Mask R-CNN is tested on: one image per call, any height and width (the network resizes it),
outputs ``boxes`` (N, 4), ``labels`` (N,), ``scores`` (N,), ``masks`` (N, 1, H, W), N ≥ 0.

The pixel-level baselines deploy as :class:`SegmentationPredictor` (class probabilities per pixel of a crop),
scripted by ``ckpt_export export_network_def`` from ``configs/segmentation.json`` [+ ``double_unet.json``].
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from malignet_bundle.atomic_io import write_atomic
from malignet_bundle.networks.global_features import GLOBAL_KEY
from malignet_bundle.networks.lfpn import LadderFPN
from malignet_bundle.networks.malignet import MaligNet

__all__ = [
    "MaligNetPredictor",
    "SegmentationPredictor",
    "inference_network",
    "export_torchscript",
    "export_onnx",
    "ONNX_OUTPUTS",
    "LADDER_DECODER_PREFIX",
]

# state-dict entries of the ladder's training-only decoders, absent from the inference network
LADDER_DECODER_PREFIX = "backbone.fpn.decoders."
ONNX_OUTPUTS = ("boxes", "labels", "scores", "masks")


class _BodyAndPyramid(nn.Module):
    """ResNet body and plain FPN under the names ``body`` and ``fpn`` (MaligNet's ``backbone.*`` keys).

    Returns both the body's maps (C5 feeds the global features) and the pyramid.
    """

    def __init__(self, body: nn.Module, fpn: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(N, C, H, W) → (C2…C5 maps, pyramid P2…P6)."""
        c_maps = self.body(x)
        return c_maps, self.fpn(c_maps)


def _plain_pyramid(fpn: FeaturePyramidNetwork) -> FeaturePyramidNetwork:
    """A torchvision FPN with the widths and weights of ``fpn`` (a ladder FPN loses its decoders)."""
    if not isinstance(fpn, LadderFPN):
        return fpn
    if fpn.upsample_mode != "nearest":
        # torchvision's FPN upsamples by nearest neighbour; other weights would give other pyramids
        raise ValueError(f"export supports nearest top-down upsampling, model uses {fpn.upsample_mode!r}")
    in_channels = [int(block[0].in_channels) for block in fpn.inner_blocks]
    out_channels = int(fpn.inner_blocks[0][0].out_channels)
    plain = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
    plain.load_state_dict({k: v for k, v in fpn.state_dict().items() if not k.startswith("decoders.")})
    return plain


class MaligNetPredictor(nn.Module):
    """The evaluation path of a :class:`MaligNet`, written so that ``torch.jit.script`` compiles it.

    Its state dict is MaligNet's without the ladder decoders; :meth:`load_state_dict` accepts a MaligNet
    state dict (decoders included) as well.

    Args:
        model: a (trained) MaligNet of any backbone and pyramid width; its modules are shared, not copied,
            except the pyramid.
    """

    def __init__(self, model: MaligNet) -> None:
        super().__init__()
        self.transform = model.transform
        self.backbone = _BodyAndPyramid(model.backbone.body, _plain_pyramid(model.backbone.fpn))
        self.global_key = GLOBAL_KEY
        # None for the baseline: TorchScript drops the global branch for a None submodule
        self.global_embedding = model.global_embedding
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        self.eval()

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections (``boxes``, ``labels``, ``scores``, ``masks``) per (C, H, W) image."""
        original_sizes: list[tuple[int, int]] = []
        for img in images:
            original_sizes.append((img.shape[-2], img.shape[-1]))
        image_list, _ = self.transform(images, None)
        c_maps, pyramid = self.backbone(image_list.tensors)
        proposals, _ = self.rpn(image_list, pyramid, None)
        head_features: dict[str, Tensor] = OrderedDict()
        for name, value in pyramid.items():
            head_features[name] = value
        if self.global_embedding is not None:
            head_features[self.global_key] = self.global_embedding(c_maps["3"])
        detections, _ = self.roi_heads(head_features, proposals, image_list.image_sizes, None)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a MaligNet (or predictor) state dict; the ladder decoders, used in training only, are skipped.

        Args:
            state_dict: ``model.pt`` of a training, or this network's own state dict.
            strict: every other key must match (PyTorch's meaning).
            assign: PyTorch's meaning.
        """
        kept = {k: v for k, v in state_dict.items() if not k.startswith(LADDER_DECODER_PREFIX)}
        return super().load_state_dict(kept, strict=strict, assign=assign)


def inference_network(**kwargs: Any) -> MaligNetPredictor:
    """The inference network of a MaligNet built with ``kwargs``: the bundle's ``network_def`` for deployment.

    Takes :class:`MaligNet`'s arguments, so the configs that size a training's network (``configs/cpu.json``:
    ``network_def#backbone`` etc.) size this one too. ``ladder`` and the ladder's noise and target options
    are accepted and have no effect: the ladder adds nothing to the evaluation path but its decoders, which
    are not built. Weights: ``load_state_dict`` of a training's ``model.pt``.

    Raises:
        ValueError: ``upsample_mode`` other than "nearest" (the plain FPN could not reproduce that pyramid).
    """
    if kwargs.get("upsample_mode", "nearest") != "nearest":
        raise ValueError(
            f"the inference network has torchvision's nearest top-down upsampling, not {kwargs['upsample_mode']!r}; "
            "run such a model with network_def#_target_ malignet_bundle.networks.malignet.MaligNet (not exportable)"
        )
    return MaligNetPredictor(MaligNet(**{**kwargs, "ladder": False}))


class SegmentationPredictor(nn.Module):
    """The evaluation path of a pixel-level network: class probabilities per pixel, for ``torch.jit.script``.

    The deployable part of :class:`~malignet_bundle.networks.segmentation.SemanticSegmenter` (MONAI
    ``BasicUNet``, :class:`~malignet_bundle.networks.double_unet.DoubleUNet`): its state dict is the
    segmenter's (``network.*``; the loss has no weights), so a training's ``model.pt`` loads into it as it is,
    and ``configs/segmentation.json``'s ``export_network_def`` is what ``ckpt_export`` scripts. The chest crop
    and its scaling come before it (``configs/inference.json``'s ``view_transforms``); the lesions, each
    connected region of one class of the argmax scored by its mean foreground probability
    (:mod:`~malignet_bundle.metrics.label_instances`), after it.

    Args:
        network: the class-logit network, (B, 1, H, W) → (B, C + 1, H, W) in evaluation.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        """(B, 1, H, W) crops, sides divisible by 2 ** (levels − 1) → (B, C + 1, H, W) float32 probabilities."""
        return torch.softmax(self.network(images).float(), dim=1)


def export_torchscript(model: MaligNet | MaligNetPredictor, path: str | os.PathLike) -> torch.jit.ScriptModule:
    """Script the inference path of ``model`` and save it atomically to ``path``; returns the scripted module."""
    predictor = model if isinstance(model, MaligNetPredictor) else MaligNetPredictor(model)
    scripted = torch.jit.script(predictor.cpu().eval())
    write_atomic(path, lambda tmp: scripted.save(str(tmp)))
    return scripted


class _SingleImage(nn.Module):
    """One (C, H, W) image in, the four detection tensors out: the tensor-only signature ONNX needs."""

    def __init__(self, predictor: MaligNetPredictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        detections = self.predictor([image])[0]
        return detections["boxes"], detections["labels"], detections["scores"], detections["masks"]


def export_onnx(
    model: MaligNet | MaligNetPredictor,
    path: str | os.PathLike,
    example: Tensor,
    opset_version: int = 17,
) -> None:
    """Export the inference path of ``model`` to ONNX at ``path`` (written atomically).

    The graph takes one ``image`` (C, H, W) of any height and width and returns :data:`ONNX_OUTPUTS`;
    the score threshold and detection limit are those of ``model`` at export time.

    Args:
        model: a MaligNet or its :class:`MaligNetPredictor`.
        path: the ``.onnx`` file.
        example: an image the exporter traces; it should give at least one detection, so that every branch
            of the heads (box decoding, NMS, mask pasting) is recorded.
        opset_version: ONNX opset (torchvision's detection models need 11 or later).
    """
    predictor = model if isinstance(model, MaligNetPredictor) else MaligNetPredictor(model)
    wrapper = _SingleImage(predictor.cpu().eval()).eval()
    with torch.no_grad():
        write_atomic(
            path,
            lambda tmp: torch.onnx.export(
                wrapper,
                (example.cpu(),),
                str(tmp),
                dynamo=False,  # the TorchScript-based exporter, which handles torchvision's detection ops
                opset_version=opset_version,
                input_names=["image"],
                output_names=list(ONNX_OUTPUTS),
                dynamic_axes={
                    "image": {1: "height", 2: "width"},
                    "boxes": {0: "detections"},
                    "labels": {0: "detections"},
                    "scores": {0: "detections"},
                    "masks": {0: "detections", 2: "height", 3: "width"},
                },
            ),
        )
