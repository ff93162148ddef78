"""The processes (ranks) that train one recommender together, and the few collectives training needs.

A process training alone is a team of one, so single-process and data-parallel training run the same code.
Two backends: torch.distributed (gloo on CPU, NCCL on GPUs; the processes TorchDistributor or torchrun start)
and Horovod (Gloo; the tasks horovod.spark.run starts).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch

from tslrec.errors import TslrecError

T = TypeVar("T")


class Team:
    """A team of one; the subclasses replace the five collectives with real ones."""

    def __init__(self, device: torch.device, rank: int = 0, world: int = 1, local_size: int = 1) -> None:
        self.device = device
        self.rank = rank
        self.world = world
        self.local_size = local_size  # ranks on this machine: they share its cores

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> None:
        """Rank 0's values into `tensor` on every rank."""

    def share(self, value: T) -> T:
        """Rank 0's value, on every rank."""
        return value

    def gather(self, value: T) -> list[T]:
        """Every rank's value in rank order, on rank 0; an empty list elsewhere."""
        return [value]

    def leave(self) -> None:
        """Ends the process's membership (the backend's process group)."""

    def max(self, value: float) -> float:
        values = self.gather(value)
        return self.share(max(values) if self.rank == 0 else value)

    def any(self, condition: bool) -> bool:
        """True on every rank when it is true on one: how a rank's error stops them all instead of some."""
        return bool(self.max(float(condition)))

    def average_gradients(self, model: torch.nn.Module) -> None:
        """One all-reduce of every gradient, flattened, and of which ranks have one: each rank then steps with the
        mean over all ranks' rows; a parameter no rank has a gradient for stays without one, as in one process."""
        if self.world == 1:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        present = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=self.device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        flat = self.all_sum(torch.cat([flat, present]))
        offset = 0
        for p, ranks_with_grad in zip(params, flat[-len(params):].tolist()):
            p.grad = flat[offset:offset + p.numel()].view_as(p) / self.world if ranks_with_grad else None
            offset += p.numel()

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Every rank starts from rank 0's weights."""
        if self.world == 1:
            return
        with torch.no_grad():
            for tensor in model.state_dict().values():
                self.broadcast_(tensor)


def _device(cuda: bool, local_rank: int, local_size: int) -> torch.device:
    """One GPU per rank of this machine (NCCL refuses two ranks on one GPU)."""
    if not cuda:
        return torch.device("cpu")
    gpus = torch.cuda.device_count()
    if local_size > gpus:
        raise TslrecError(f"{local_size} ranks on this machine but {gpus} GPU(s) visible: one rank per GPU, so set "
                          f"srs.distributed.processes to at most the GPUs per machine, or srs.device=cpu")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


class TorchTeam(Team):
    """torch.distributed, from the environment a launcher sets (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""

    def __init__(self, cuda: bool) -> None:
        import torch.distributed as dist

        self._dist = dist
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        device = _device(cuda, int(os.environ.get("LOCAL_RANK", "0")), local_size)
        dist.init_process_group("nccl" if cuda else "gloo")
        super().__init__(device, dist.get_rank(), dist.get_world_size(), local_size)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        self._dist.all_reduce(tensor)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> None:
        self._dist.broadcast(tensor, src=0)

    def share(self, value: T) -> T:
        box: list[Any] = [value]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        values: list[Any] | None = [None] * self.world if self.rank == 0 else None
        self._dist.gather_object(value, values, dst=0)
        return values or []

    def leave(self) -> None:
        self._dist.destroy_process_group()


class HorovodTeam(Team):
    """Horovod (built by scripts/build_horovod.sh), inside a task of horovod.spark.run or horovodrun."""

    def __init__(self, cuda: bool) -> None:
        import horovod.torch as hvd

        self._hvd = hvd
        hvd.init()
        if cuda and not hvd.cuda_built():
            raise TslrecError("this Horovod was built without CUDA (scripts/build_horovod.sh builds it for CPUs with "
                              "Gloo): use srs.distributed.backend=torch on GPUs, or srs.device=cpu")
        device = _device(cuda, hvd.local_rank(), hvd.local_size())
        super().__init__(device, hvd.rank(), hvd.size(), hvd.local_size())

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._hvd.allreduce(tensor, op=self._hvd.Sum)

    def broadcast_(self, tensor: torch.Tensor) -> None:
        self._hvd.broadcast_(tensor, root_rank=0)

    def share(self, value: T) -> T:
        return self._hvd.broadcast_object(value, root_rank=0)

    def gather(self, value: T) -> list[T]:
        values = self._hvd.allgather_object(value)
        return values if self.rank == 0 else []

    def leave(self) -> None:
        self._hvd.shutdown()
