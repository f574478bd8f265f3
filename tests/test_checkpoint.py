"""Checkpoint writing and resume selection, on small real checkpoint files."""

from __future__ import annotations

import pytest
import torch
from monai.optimizers import WarmupCosineSchedule

from malignet_bundle.atomic_io import TEMP_PREFIX, save_torch_atomic
from malignet_bundle.engines.checkpoint import (
    AtomicDiskSaver,
    FinishedRunError,
    check_resumed_schedule,
    prepare_resume,
    read_checkpoint_state,
)


def _checkpoint(path, epoch: int, epoch_length: int = 5) -> None:
    trainer = {"epoch_length": epoch_length, "max_epochs": 10, "iteration": epoch * epoch_length}
    torch.save({"model": {"w": torch.full((3,), float(epoch))}, "trainer": trainer}, path)


class _FailsHalfway:
    """Pickles to an error after the tensors before it have been written: a write that dies midway."""

    def __reduce__(self):
        raise OSError("disk full (simulated by a failing pickle)")


def test_resume_picks_the_newest_recorded_epoch_not_the_file_order(tmp_path):
    # names that sort, glob and even claim the opposite of what the files record
    _checkpoint(tmp_path / "latest_checkpoint_epoch=9.pt", epoch=2)
    _checkpoint(tmp_path / "latest_checkpoint_epoch=1.pt", epoch=3)
    _checkpoint(tmp_path / "latest_checkpoint_epoch=5.pt", epoch=1)
    assert prepare_resume(tmp_path, epochs=10).endswith("latest_checkpoint_epoch=1.pt")


def test_resume_skips_and_names_damaged_checkpoints_and_clears_killed_writes(tmp_path, caplog):
    _checkpoint(tmp_path / "latest_checkpoint_epoch=2.pt", epoch=2)
    _checkpoint(tmp_path / "latest_checkpoint_epoch=3.pt", epoch=3)
    whole = (tmp_path / "latest_checkpoint_epoch=3.pt").read_bytes()
    (tmp_path / "latest_checkpoint_epoch=3.pt").write_bytes(whole[: len(whole) // 2])  # truncated by a kill
    (tmp_path / "latest_checkpoint_epoch=4.pt").write_bytes(b"")
    (tmp_path / f"{TEMP_PREFIX}abc.latest_checkpoint_epoch=5.pt").write_bytes(whole[:100])
    with caplog.at_level("WARNING"):
        chosen = prepare_resume(tmp_path, epochs=10)
    assert chosen.endswith("latest_checkpoint_epoch=2.pt")
    assert "latest_checkpoint_epoch=3.pt: not a readable checkpoint" in caplog.text
    assert "latest_checkpoint_epoch=4.pt: not a readable checkpoint" in caplog.text
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))
    assert (tmp_path / "latest_checkpoint_epoch=3.pt").is_file()  # damaged files are reported, not deleted here


def test_only_damaged_checkpoints_start_from_scratch_with_a_warning(tmp_path, caplog):
    (tmp_path / "latest_checkpoint_epoch=1.pt").write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level("WARNING"):
        assert prepare_resume(tmp_path, epochs=3) == ""
    assert "no complete checkpoint" in caplog.text


def test_a_finished_run_refuses_to_train_zero_epochs(tmp_path):
    _checkpoint(tmp_path / "latest_checkpoint_epoch=4.pt", epoch=4)
    with pytest.raises(FinishedRunError, match=r"latest_checkpoint_epoch=4.pt has trained 4 of the 4 epochs"):
        prepare_resume(tmp_path, epochs=4)
    assert prepare_resume(tmp_path, epochs=6).endswith("latest_checkpoint_epoch=4.pt")  # more epochs: train on


def test_resume_false_moves_the_earlier_run_aside(tmp_path):
    _checkpoint(tmp_path / "latest_checkpoint_epoch=4.pt", epoch=4)
    torch.save({"w": torch.ones(1)}, tmp_path / "model.pt")
    (tmp_path / "chest_detector.pt").write_bytes(b"not ours to move")
    assert prepare_resume(tmp_path, epochs=4, resume=False) == ""
    (archive,) = (tmp_path / "previous_runs").iterdir()
    assert sorted(p.name for p in archive.iterdir()) == ["latest_checkpoint_epoch=4.pt", "model.pt"]
    assert (tmp_path / "chest_detector.pt").is_file() and not (tmp_path / "model.pt").exists()


def test_read_checkpoint_state_names_a_file_without_trainer_state(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model.pt: holds no trainer state"):
        read_checkpoint_state(tmp_path / "model.pt")


def test_a_failed_write_leaves_the_previous_model_intact(tmp_path):
    saver = AtomicDiskSaver(tmp_path, filename="model.pt")
    saver({"w": torch.ones(4)}, "ignored.pt")
    before = (tmp_path / "model.pt").read_bytes()
    saver.remove("ignored.pt")  # what ignite does before each new save
    with pytest.raises(OSError, match="disk full"):
        saver({"w": torch.zeros(1000), "boom": _FailsHalfway()}, "ignored.pt")
    assert (tmp_path / "model.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


def test_interval_saver_removes_the_superseded_and_stale_files_only_after_writing(tmp_path):
    _checkpoint(tmp_path / "latest_checkpoint_epoch=7.pt", epoch=7)  # left by an earlier process
    saver = AtomicDiskSaver(tmp_path, sweep_prefix="latest_checkpoint")
    saver({"trainer": {}}, "latest_checkpoint_epoch=1.pt")
    saver.remove("latest_checkpoint_epoch=1.pt")
    assert (tmp_path / "latest_checkpoint_epoch=1.pt").is_file()  # marked, not yet deleted
    saver({"trainer": {}}, "latest_checkpoint_epoch=2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest_checkpoint_epoch=2.pt"]


def test_atomic_torch_save_never_exposes_a_partial_file(tmp_path):
    target = tmp_path / "sub" / "x.pt"
    save_torch_atomic({"a": torch.arange(10)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(10))
    with pytest.raises(OSError):
        save_torch_atomic({"a": torch.arange(5), "b": _FailsHalfway()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(10))


def _scheduler(kind: str, total: int):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    if kind == "cosine":  # configs/cosine_schedule.json: t_total = epochs * iterations per epoch
        return optimizer, WarmupCosineSchedule(optimizer, warmup_steps=2, t_total=total)
    return optimizer, torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=2)  # train.json


def _trained_scheduler_checkpoint(path, kind: str, total: int) -> None:
    optimizer, scheduler = _scheduler(kind, total)
    for _ in range(total):
        optimizer.step()
        scheduler.step()
    torch.save({"trainer": {"epoch_length": 5, "iteration": total}, "lr_scheduler": scheduler.state_dict()}, path)


def test_a_resume_that_would_replay_another_schedule_length_is_refused(tmp_path):
    path = tmp_path / "latest_checkpoint_epoch=2.pt"
    _trained_scheduler_checkpoint(path, "cosine", total=10)
    # the premise: loading the state restores the old length, and the cosine climbs back after its end
    optimizer, longer = _scheduler("cosine", 20)
    longer.load_state_dict(torch.load(path, weights_only=True)["lr_scheduler"])
    assert longer.t_total == 10
    for _ in range(8):
        optimizer.step()
        longer.step()
    assert optimizer.param_groups[0]["lr"] > 0.9
    # the check, before the load: another --epochs is refused with the file and both lengths named
    with pytest.raises(ValueError, match=r"latest_checkpoint_epoch=2\.pt.*t_total 10 in the checkpoint, 20 configured"):
        check_resumed_schedule(path, _scheduler("cosine", 20)[1])
    # another kind of schedule than the one the run started with is refused too
    with pytest.raises(ValueError, match="not a LinearLR"):
        check_resumed_schedule(path, _scheduler("linear", 20)[1])
    # the same schedule resumes; "" (no checkpoint) checks nothing
    check_resumed_schedule(path, _scheduler("cosine", 10)[1])
    check_resumed_schedule("", _scheduler("cosine", 20)[1])


def test_the_default_warm_up_can_train_on_with_more_epochs(tmp_path):
    path = tmp_path / "latest_checkpoint_epoch=2.pt"
    _trained_scheduler_checkpoint(path, "linear", total=10)
    check_resumed_schedule(path, _scheduler("linear", 40)[1])  # its length is the warm-up, not the run
