"""One rank of tests/test_mean_teacher.py's gloo run: DDP student, mean teacher, three steps on this rank's crops.

    python -m torch.distributed.run --nproc_per_node 2 tests/mean_teacher_ddp_worker.py result.json

Rank 0 writes whether the teachers (and students) of all ranks are identical afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from monai.data.utils import no_collation
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from malignet_bundle.engines.trainer import SemiSupervisedTrainer, WeightedLossSum  # noqa: E402
from malignet_bundle.semi_supervised.mean_teacher import MeanTeacher  # noqa: E402
from tests.test_mean_teacher import SIZE, lesion_crop, tiny_net  # noqa: E402


def identical(tensors: list[torch.Tensor]) -> bool:
    """Whether every rank holds the same values of every tensor."""
    same = True
    for tensor in tensors:
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        same &= all(torch.equal(gathered[0], g) for g in gathered[1:])
    return same


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    student = tiny_net(0)
    network = torch.nn.parallel.DistributedDataParallel(student, find_unused_parameters=True)
    method = MeanTeacher(network, decay=0.7, burn_in=1, threshold=0.0)
    start = [p.detach().clone() for p in method.teacher.parameters()]
    # each rank its own labeled and unlabeled crops, as a DistributedSampler would shard them
    generator = torch.Generator().manual_seed(100 + rank)
    labeled = [lesion_crop(shift) for shift in (rank, rank + 3, rank + 6)]
    unlabeled = [{"image": torch.rand(1, SIZE, SIZE, generator=generator)} for _ in range(2)]
    trainer = SemiSupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        epoch_length=3,
        train_data_loader=DataLoader(labeled, batch_size=1, collate_fn=no_collation),
        unlabeled_data_loader=DataLoader(unlabeled, batch_size=1, collate_fn=no_collation),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-3),
        loss_function=WeightedLossSum(),
        method=method,
    )
    trainer.run()
    teacher_buffers = [b for b in method.teacher.buffers() if b.is_floating_point()]
    student_buffers = [b for b in student.buffers() if b.is_floating_point()]
    result = {
        "iterations": trainer.state.iteration,
        "teacher_moved": any(not torch.equal(a, b) for a, b in zip(start, method.teacher.parameters(), strict=True)),
        "teacher_parameters_identical": identical(list(method.teacher.parameters())),
        "teacher_buffers_identical": identical(teacher_buffers),
        "student_parameters_identical": identical(list(student.parameters())),
        "student_buffers_identical": identical(student_buffers),
    }
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
