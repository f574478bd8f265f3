"""Mean teacher: EMA, gradients, burn-in, pseudo-target geometry, resume; the seam's method selection.

Real trainers on a tiny MaligNet (ResNet-18, 16-channel pyramid, 64-pixel crops) over synthetic crops.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from ignite.engine import Events
from monai.data.utils import no_collation
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader
from monai.transforms import Compose, RandAffined, RandCoarseDropoutd, RandFlipd, RandScaleIntensityd
from torch.utils.data import DataLoader

from malignet_bundle.engines.trainer import SemiSupervisedTrainer, WeightedLossSum
from malignet_bundle.networks.malignet import MaligNet
from malignet_bundle.semi_supervised.ladder import Ladder
from malignet_bundle.semi_supervised.mean_teacher import (
    UNSUPERVISED_LOSS_KEY,
    MeanTeacher,
    augment_pseudo_labeled,
    predict_pseudo_targets,
)
from malignet_bundle.semi_supervised.selection import method_overrides
from malignet_bundle.transforms.geometry import masks_to_boxes

from .conftest import ROOT
from .test_bundle_training import torchrun_launcher

SIZE = 64
# known lesions of the synthetic crop: (row, column, radius), label
LESIONS = [((16, 20, 5), 1), ((40, 44, 6), 2), ((48, 14, 4), 3)]


def tiny_net(seed: int = 0, ladder: bool = True) -> MaligNet:
    """A CPU-second MaligNet (or, ``ladder=False``, plain Mask R-CNN) for 64-pixel crops."""
    torch.manual_seed(seed)
    return MaligNet(
        image_size=SIZE,
        ladder=ladder,
        global_features=ladder,
        backbone="resnet18",
        pyramid_channels=16,
        representation_size=32,
        global_channels=16,
        box_batch_size_per_image=16,
        rpn_batch_size_per_image=32,
        box_detections_per_img=8,  # a random teacher at threshold 0 labels this many lesions per crop
    )


def lesion_crop(shift: int = 0) -> dict[str, torch.Tensor]:
    """A crop with bright discs on a dim background, their masks, labels and boxes."""
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    masks = torch.stack([((rows - r) ** 2 + (cols - c - shift) ** 2 <= rad**2) for (r, c, rad), _ in LESIONS])
    masks = masks.to(torch.uint8)
    image = 0.1 + 0.9 * masks.amax(0, keepdim=True).float()
    labels = torch.tensor([label for _, label in LESIONS])
    return {"image": image, "masks": masks, "labels": labels, "boxes": masks_to_boxes(masks)}


def unlabeled_crop(seed: int) -> dict[str, torch.Tensor]:
    return {"image": torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))}


def make_trainer(network, method, epoch_length: int = 2, max_epochs: int = 1, **kwargs) -> SemiSupervisedTrainer:
    labeled = [lesion_crop(shift) for shift in (0, 3, 6, 9)]
    unlabeled = [unlabeled_crop(k) for k in range(4)]
    return SemiSupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        epoch_length=epoch_length,
        train_data_loader=DataLoader(labeled, batch_size=2, collate_fn=no_collation),
        unlabeled_data_loader=DataLoader(unlabeled, batch_size=2, collate_fn=no_collation),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-3),
        loss_function=WeightedLossSum({UNSUPERVISED_LOSS_KEY: 4.0}),
        method=method,
        **kwargs,
    )


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_ema(teacher_after, teacher_before, student, alpha: float) -> None:
    """teacher = α·teacher + (1 − α)·student for every float entry (parameters and batch-norm statistics)."""
    for name, value in teacher_after.items():
        if value.is_floating_point():
            expected = alpha * teacher_before[name] + (1 - alpha) * student[name]
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7, msg=name)


@pytest.fixture(scope="module")
def taught():
    """A MaligNet student trained 3 iterations with the mean teacher (burn-in 1, α 0.9): state at each step."""
    student = tiny_net()
    method = MeanTeacher(student, decay=0.9, burn_in=1, threshold=0.0)
    trainer = make_trainer(student, method, epoch_length=3)
    steps: list[dict] = []
    trainer.add_event_handler(
        Events.ITERATION_STARTED, lambda _: steps.append({"teacher_before": state(method.teacher)})
    )
    # after the optimizer step, before ITERATION_COMPLETED's teacher update
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda _: steps[-1].update(student=state(student)))

    def record(engine) -> None:
        steps[-1].update(teacher_after=state(method.teacher), output=dict(engine.state.output[0]))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    return student, method, steps


def test_burn_in_trains_supervised_with_the_teacher_following_the_student(taught):
    _, _, steps = taught
    burn_in, *teaching = steps
    assert float(burn_in["output"][UNSUPERVISED_LOSS_KEY]) == 0 and float(burn_in["output"]["pseudo_lesions"]) == 0
    assert all(torch.equal(burn_in["teacher_after"][k], burn_in["student"][k]) for k in burn_in["student"])
    for step in teaching:  # after burn-in the student learns the teacher's lesions, and the two part
        out = step["output"]
        assert float(out[UNSUPERVISED_LOSS_KEY]) > 0 and float(out["loss_classifier_pseudo"]) > 0
        assert float(out["pseudo_lesions"]) > 0 and "loss_ladder" in out  # MaligNet: both costs
        assert any(not torch.equal(step["teacher_after"][k], step["student"][k]) for k in step["student"])


def test_teacher_is_the_exact_ema_of_the_student_and_no_gradient_reaches_it(taught):
    student, method, steps = taught
    for step in steps[1:]:
        assert_ema(step["teacher_after"], step["teacher_before"], step["student"], alpha=0.9)
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in student.backbone.body.layer1.parameters())
    assert not method.teacher.training  # evaluation mode: batch-norm statistics come from the EMA


def test_pseudo_targets_move_with_the_strongly_augmented_crop():
    crop = lesion_crop()
    target = {"masks": crop["masks"], "labels": crop["labels"]}
    flip = RandFlipd(["image", "masks"], prob=1.0, spatial_axis=1)
    image, flipped = augment_pseudo_labeled(crop["image"], target, flip)
    assert torch.equal(flipped["masks"], crop["masks"].flip(-1)) and torch.equal(flipped["labels"], crop["labels"])
    x0, y0, x1, y1 = crop["boxes"].unbind(1)
    torch.testing.assert_close(flipped["boxes"], torch.stack([SIZE - x1, y0, SIZE - x0, y1], 1))

    strong = Compose(
        [
            RandFlipd(["image", "masks"], prob=1.0, spatial_axis=1),
            RandAffined(
                ["image", "masks"],
                prob=1.0,
                rotate_range=0.4,
                translate_range=(6, 6),
                scale_range=0.15,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandScaleIntensityd("image", factors=0.2, prob=1.0),
        ]
    )
    for seed in range(4):
        strong.set_random_state(seed)
        image, out = augment_pseudo_labeled(crop["image"], target, strong)
        assert len(out["labels"]) == len(out["masks"]) == len(out["boxes"]) >= 1
        torch.testing.assert_close(out["boxes"], masks_to_boxes(out["masks"]))
        bright = image[0] > 0.5 * image.max()  # where the lesions are in the augmented image
        union = out["masks"].bool().any(0)
        iou = (bright & union).sum() / (bright | union).sum()
        assert iou > 0.8, f"seed {seed}: pseudo-masks off the lesions (IoU {iou:.2f})"
        for mask in out["masks"].bool():
            assert image[0][mask].mean() > 3 * image[0][~union].mean()

    # cut-out blanks the masks with the image: an erased lesion is no longer a target
    erase_all = RandCoarseDropoutd(["image", "masks"], holes=1, spatial_size=SIZE, fill_value=0.0, prob=1.0)
    image, out = augment_pseudo_labeled(crop["image"], target, erase_all)
    assert image.abs().sum() == 0 and len(out["labels"]) == 0 and out["boxes"].shape == (0, 4)
    # a crop without pseudo-lesions goes through the same transforms
    empty = {"masks": torch.zeros(0, SIZE, SIZE, dtype=torch.uint8), "labels": torch.zeros(0, dtype=torch.long)}
    image, out = augment_pseudo_labeled(crop["image"], empty, strong)
    assert image.shape == crop["image"].shape and out["masks"].shape == (0, SIZE, SIZE)


def test_teacher_detections_become_binary_pseudo_targets_above_the_threshold():
    teacher = tiny_net(2)
    images = [unlabeled_crop(k)["image"] for k in range(2)]
    everything = predict_pseudo_targets(teacher, images, threshold=0.0)
    scores = torch.cat([t["scores"] for t in everything])
    distinct = scores.unique()  # sorted; a threshold between two scores, so no score sits on it
    threshold = float(distinct[len(distinct) // 2 - 1 : len(distinct) // 2 + 1].mean())
    kept = predict_pseudo_targets(teacher, images, threshold=threshold)
    assert sum(len(t["labels"]) for t in kept) == int((scores >= threshold).sum())
    for t in kept:
        assert t["masks"].dtype == torch.uint8 and t["masks"].shape[1:] == (SIZE, SIZE)
        assert set(t["masks"].unique().tolist()) <= {0, 1} and not t["masks"].requires_grad
        assert bool((t["scores"] >= threshold).all())
    assert teacher.roi_heads.score_thresh == 0.7  # the network's own threshold is back


def test_a_cap_keeps_each_crops_highest_scored_pseudo_lesions():
    teacher = tiny_net(2)
    images = [unlabeled_crop(k)["image"] for k in range(2)]
    everything = predict_pseudo_targets(teacher, images, threshold=0.0)
    assert max(len(t["labels"]) for t in everything) > 2  # so that the cap has something to cut
    capped = predict_pseudo_targets(teacher, images, threshold=0.0, max_per_image=2)
    for full, cut in zip(everything, capped, strict=True):
        assert len(cut["labels"]) == min(2, len(full["labels"]))
        assert torch.equal(cut["scores"].sort(descending=True).values, full["scores"].sort(descending=True).values[:2])
    assert teacher.roi_heads.detections_per_img == 8  # tiny_net's own limit is back
    with pytest.raises(ValueError, match="max_pseudo_lesions"):
        MeanTeacher(tiny_net(0), max_pseudo_lesions=0)


def test_resume_restores_the_teacher_and_the_step_count(tmp_path):
    # no pseudo-lesion reaches 0.99 here: resume does not depend on them, and the steps stay short
    student = tiny_net(3)
    method = MeanTeacher(student, decay=0.8, burn_in=0, threshold=0.99)
    trainer = make_trainer(student, method, epoch_length=1)
    trainer.run()
    saved = {"model": state(method.teacher), "student": state(student), "trainer": trainer.state_dict()}
    saved["optimizer"] = trainer.optimizer.state_dict()
    torch.save(saved, tmp_path / "latest.pt")

    # a new process: fresh student and teacher, then the bundle's CheckpointLoader (mean_teacher.json's keys)
    student2 = tiny_net(4)
    method2 = MeanTeacher(student2, decay=0.8, burn_in=0, threshold=0.99)
    trainer2 = make_trainer(student2, method2, epoch_length=1, max_epochs=2)
    load = {"model": method2.teacher, "student": student2, "trainer": trainer2, "optimizer": trainer2.optimizer}
    CheckpointLoader(str(tmp_path / "latest.pt"), load, map_location="cpu").attach(trainer2)
    seen = {}
    trainer2.add_event_handler(
        Events.ITERATION_STARTED, lambda e: seen.update(iteration=e.state.iteration, teacher=state(method2.teacher))
    )
    trainer2.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda _: seen.update(student=state(student2)))
    trainer2.run()
    assert seen["iteration"] == 2 and trainer2.state.iteration == 2  # continued after the saved step
    for name, value in saved["model"].items():  # the teacher came back as saved, not copied from the student
        torch.testing.assert_close(seen["teacher"][name], value, msg=name)
    assert any(not torch.equal(saved["model"][k], saved["student"][k]) for k in saved["model"])
    assert_ema(state(method2.teacher), saved["model"], seen["student"], alpha=0.8)  # and the EMA went on from it


def test_plain_mask_rcnn_with_the_teacher_and_bf16_autocast():
    student = tiny_net(5, ladder=False)
    method = MeanTeacher(student, burn_in=0, threshold=0.0, pseudo_losses={"loss_box_reg": True})
    trainer = make_trainer(student, method, epoch_length=1, bf16_on_cpu=True)
    trainer.run()
    out = trainer.state.output[0]
    assert "loss_ladder" not in out and float(out[UNSUPERVISED_LOSS_KEY]) > 0
    assert all(torch.isfinite(v) for k, v in out.items() if k.startswith("loss"))
    assert method.pseudo_losses == ("loss_objectness", "loss_classifier", "loss_box_reg", "loss_mask")
    with pytest.raises(ValueError, match="unknown pseudo-label losses"):
        MeanTeacher(student, pseudo_losses={"loss_boxes": True})
    with pytest.raises(ValueError, match="no pseudo-label loss"):
        MeanTeacher(student, pseudo_losses=dict.fromkeys(("loss_objectness", "loss_classifier", "loss_mask"), "false"))


def test_a_trainer_without_a_method_is_the_ladder_and_methods_have_names():
    student = tiny_net(6)
    trainer = make_trainer(student, None, epoch_length=1)
    assert isinstance(trainer.method, Ladder)
    configs = ROOT / "configs"
    assert method_overrides("ladder", configs) == {}
    supervised = method_overrides("supervised", configs)
    assert supervised["train#trainer#unlabeled_data_loader"] is None
    teacher = method_overrides("mean_teacher", configs, teacher_ready=True)
    assert teacher["semi_supervised"]["_target_"].endswith("MeanTeacher") and teacher["mean_teacher_burn_in"] == 0
    assert method_overrides("mean_teacher", configs)["mean_teacher_burn_in"] == 2000
    with pytest.raises(ValueError, match="unknown semi-supervised method"):
        method_overrides("co_training", configs)
    # torchrun: multi_gpu_train.json and mean_teacher.json set different ids, so they merge in either order
    multi_gpu = json.loads((configs / "multi_gpu_train.json").read_text())
    assert not set(multi_gpu) & set(teacher)


def test_two_gloo_processes_keep_identical_teachers(tmp_path):
    """torchrun, 2 CPU processes, DDP over gloo, each rank on its own crops: one teacher, bit for bit."""
    out = tmp_path / "ranks.json"
    command = [*torchrun_launcher(), str(ROOT / "tests" / "mean_teacher_ddp_worker.py"), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(out.read_text())
    assert result["iterations"] == 3 and result["teacher_moved"]
    assert result["teacher_parameters_identical"] and result["teacher_buffers_identical"]
    # what makes the broadcast necessary: each rank's student has its own batch-norm statistics
    assert not result["student_buffers_identical"]
    assert result["student_parameters_identical"]  # the all-reduced step
