from __future__ import annotations

import json

import pytest
import torch

from malignet_bundle.engines.self_training import pseudo_label
from malignet_bundle.networks.malignet import MaligNet


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    # no score floor, so the untrained teacher proposes up to 100 lesions per image, all of low confidence
    net = MaligNet(image_size=96, box_score_thresh=0.0)
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    torch.save(net.state_dict(), path)
    return net, path


def _crops(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.rand(1, 96, 96, generator=g)} for _ in range(n)]


def test_lesion_and_image_level_filtering(teacher):
    net, path = teacher
    crops = _crops(3)
    net.eval()
    with torch.no_grad():
        scores = [d["scores"] for d in net([c["image"] for c in crops])]
    threshold = float(torch.cat(scores).median())
    everything = pseudo_label(net, path, crops, threshold=0.0, level="lesion")
    assert [len(s["labels"]) for s in everything] == [len(s) for s in scores]
    for sample in everything:
        assert sample["masks"].shape[1:] == (96, 96) and sample["masks"].dtype == torch.uint8
        assert len(sample["boxes"]) == len(sample["labels"]) == len(sample["masks"])
    lesion_level = pseudo_label(net, path, crops, threshold=threshold, level="lesion", keep_empty=True)
    assert [len(s["labels"]) for s in lesion_level] == [int((s >= threshold).sum()) for s in scores]
    image_level = pseudo_label(net, path, crops, threshold=threshold, level="image")
    assert len(image_level) == sum(bool((s >= threshold).all()) for s in scores)
    # above every score nothing is detected: those images are dropped unless kept as all-background targets
    above_all = float(torch.cat(scores).max()) + 1e-3
    assert pseudo_label(net, path, crops, threshold=above_all, level="lesion") == []
    empties = pseudo_label(net, path, crops, threshold=above_all, level="lesion", keep_empty=True)
    assert [len(s["labels"]) for s in empties] == [0, 0, 0]
    assert all(s["masks"].shape == (0, 96, 96) and s["boxes"].shape == (0, 4) for s in empties)
    assert net.training  # handed back ready to train


def test_pseudo_label_counts_are_written_for_the_benchmark(teacher, tmp_path):
    net, path = teacher
    crops = _crops(3)
    net.eval()
    with torch.no_grad():
        scores = [d["scores"] for d in net([c["image"] for c in crops])]
    above_all = float(torch.cat(scores).max()) + 1e-3
    summary_file = tmp_path / "pseudo_labels.json"
    assert pseudo_label(net, path, crops, threshold=above_all, level="lesion", summary_file=summary_file) == []
    summary = json.loads(summary_file.read_text())
    assert (summary["seen"], summary["kept"], summary["lesions"], summary["empty"]) == (3, 0, 0, 3)
    assert summary["empty_kept"] is False and summary["dropped_lesions"] == 0
    pseudo_label(net, path, crops, threshold=above_all, level="lesion", keep_empty=True, summary_file=summary_file)
    summary = json.loads(summary_file.read_text())
    assert (summary["kept"], summary["empty"], summary["empty_kept"]) == (3, 3, True)
    everything = pseudo_label(net, path, crops, threshold=0.0, level="lesion", summary_file=summary_file)
    summary = json.loads(summary_file.read_text())
    assert summary["lesions"] == sum(len(s["labels"]) for s in everything) == sum(len(s) for s in scores)
    assert summary["kept"] == sum(len(s) > 0 for s in scores) and summary["threshold"] == 0.0


def test_teacher_weights_are_loaded_and_bad_inputs_named(teacher, tmp_path):
    net, path = teacher
    student = MaligNet(image_size=96, box_score_thresh=0.0)
    pseudo_label(student, path, _crops(1), threshold=0.0, level="lesion")
    for (name, a), b in zip(student.state_dict().items(), net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found"):
        pseudo_label(student, tmp_path / "none.pt", _crops(1))
    with pytest.raises(ValueError, match="level"):
        pseudo_label(student, path, _crops(1), level="study")
