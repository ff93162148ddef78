"""Starting the ranks of data-parallel training on Spark, by srs.distributed.backend.

torch: pyspark's TorchDistributor. In local mode it starts the ranks as processes of this machine (torchrun);
otherwise each rank is a Spark barrier task of the cluster, so every executor must reach the lake and the
checkpoint folder. On GPUs a rank takes the GPU of its local rank (NCCL); on CPU they use gloo.
horovod: horovod.spark.run, one Spark task per rank, Gloo.
Whatever the backend, every rank returns the same value (rank 0's), so any rank's result can be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tslrec.config import Config
from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.logs import get_logger
from tslrec.srs.team import HorovodTeam, Team, TorchTeam
from tslrec.srs.train import device_for

log = get_logger(__name__)


def launch(ctx: RunContext, function: Callable[..., Any], *args: Any) -> Any:
    """function(*args) on every rank; its result (the same on every rank)."""
    settings = ctx.config.srs.distributed
    master = ctx.spark.sparkContext.master
    local = settings.local_mode if settings.local_mode is not None else master.startswith("local")
    on_this_machine = master.startswith("local") or (settings.backend == "torch" and local)
    if not on_this_machine:
        _check_shared(ctx.config)
    cuda = device_for(ctx.config).type == "cuda"
    log.info("%d ranks with %s: %s", settings.processes, settings.backend,
             "processes of this machine" if on_this_machine else f"Spark tasks of {master}")
    if settings.backend == "torch":
        from pyspark.ml.torch.distributor import TorchDistributor

        # in local mode each rank picks its GPU itself; Spark's GPU scheduling is needed only for its tasks
        distributor = TorchDistributor(num_processes=settings.processes, local_mode=local, use_gpu=cuda and not local)
        return distributor.run(function, *args)
    try:
        import horovod.spark
    except ImportError as exc:
        raise TslrecError(
            "srs.distributed.backend=horovod needs Horovod, which the default install leaves out: "
            "run scripts/build_horovod.sh (about 10 minutes), or use srs.distributed.backend=torch"
        ) from exc
    return horovod.spark.run(function, args=args, num_proc=settings.processes, use_gloo=True)[0]


def _check_shared(config: Config) -> None:
    """Ranks on other machines resolve a relative folder in their own working directory: refuse it."""
    for key, value in (("lake.root", config.lake.root), ("srs.checkpoints", config.srs.checkpoints)):
        if value is not None and "://" not in value and not Path(value).expanduser().is_absolute():
            raise TslrecError(f"{key}={value} is a relative folder, but the ranks run as Spark tasks on other machines: "
                              f"give a URI or an absolute path that every executor reaches")


def join(config: Config) -> Team:
    """This rank's team, in the process the launcher started."""
    cuda = device_for(config).type == "cuda"
    return TorchTeam(cuda) if config.srs.distributed.backend == "torch" else HorovodTeam(cuda)
