"""Data-parallel training of the recommenders: real gloo process groups, TorchDistributor on the local Spark,
Horovod where scripts/build_horovod.sh has installed it, and checkpoints that resume a killed training."""

import importlib.util
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tslrec.config import load_config
from tslrec.context import RunContext
from tslrec.data import ingest, sequences
from tslrec.errors import TslrecError
from tslrec.srs import stages as srs_stages
from tslrec.srs import train as srs_train
from tslrec.srs.data import load_sequences
from tslrec.srs.team import TorchTeam

from conftest import TEST_SPARK

# Two ranks may not reach one process's metrics exactly (other batches, other dropout draws): this much apart at most.
TOLERANCE = 0.03
SMALL = ["synthetic.users=400", "synthetic.items=100", "srs.max_epochs=15", "srs.patience=15", "srs.device=cpu",
         "srs.threads=1", "srs.activity_groups=2"]


def _rank(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    team = TorchTeam(cuda=False)
    torch.manual_seed(100 + rank)  # different starting weights on purpose: rank 0's must win
    model = torch.nn.Linear(3, 2)
    team.broadcast_parameters(model)
    inputs = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 10
    mine = inputs[rank * 4:(rank + 1) * 4]  # each rank holds half of the batch
    model(mine).pow(2).mean().backward()
    team.average_gradients(model)
    torch.save({"weight": model.weight.detach().clone(), "grad": model.weight.grad.clone(),
                "gathered": team.gather(rank * 10), "shared": team.share(f"from {rank}"), "max": team.max(rank + 0.5)},
               f"{folder}/{rank}.pt")
    team.leave()


def test_ranks_start_alike_and_step_with_the_gradient_of_the_whole_batch(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    torch.manual_seed(100)
    alone = torch.nn.Linear(3, 2)
    alone(torch.arange(24, dtype=torch.float32).reshape(8, 3) / 10).pow(2).mean().backward()
    for state in ranks:
        assert torch.equal(state["weight"], alone.weight.detach())
        assert torch.allclose(state["grad"], alone.weight.grad, atol=1e-6)
        assert state["shared"] == "from 0" and state["max"] == 1.5
    assert ranks[0]["gathered"] == [0, 10] and ranks[1]["gathered"] == []


@pytest.fixture(scope="module")
def synthetic(spark, tmp_path_factory):
    """400 synthetic users over 100 items: hard enough that metrics are far from 0 and 1."""
    folder = tmp_path_factory.mktemp("distributed")
    overrides = [f"lake.root={folder / 'lake'}", f"srs.checkpoints={folder / 'checkpoints'}", *TEST_SPARK, *SMALL]
    ctx = RunContext(load_config(overrides=overrides))
    ingest.run(ctx)
    sequences.run(ctx)
    return overrides


def _pretrained(overrides, *extra):
    """The pretrain stage's test metrics (all users) and its srs_training row."""
    ctx = RunContext(load_config(overrides=[*overrides, *extra]))
    srs_stages.pretrain(ctx)
    metrics = ctx.lake.read_pandas("srs_metrics", where={"run_id": ctx.run_id})
    test = metrics[(metrics["split"] == "test") & (metrics["user_group"] == "all") & (metrics["stage"] == "pretrain")]
    training = ctx.lake.read_pandas("srs_training", where={"run_id": ctx.run_id}).iloc[0]
    embeddings = ctx.lake.read_arrow("srs_item_embeddings", where={"run_id": ctx.run_id})
    assert embeddings.num_rows == 100
    return test.set_index("metric")["value"], test["users"].iloc[0], training


def test_two_ranks_with_torch_distributor_reach_the_metrics_of_one_process(synthetic):
    alone, users_alone, trained_alone = _pretrained(synthetic)
    ranks, users_ranks, trained_ranks = _pretrained(synthetic, "srs.distributed.backend=torch")
    assert trained_alone["processes"] == 1 and trained_ranks["processes"] == 2
    assert users_ranks == users_alone  # rank 0 summarised every rank's users
    assert alone["NDCG@10"] > 0.1  # a model that learned something, not a floor both sides share
    assert (ranks - alone).abs().max() <= TOLERANCE, (ranks - alone)
    checkpoints = Path(next(o for o in synthetic if o.startswith("srs.checkpoints=")).split("=", 1)[1])
    assert not list(checkpoints.glob("**/*.pt")), "a model's checkpoint goes once its results are written"


def test_ranks_as_spark_barrier_tasks_train_the_model_of_local_processes(synthetic):
    """local_mode=false is the cluster path: each rank a Spark task (here of the local[2] master)."""
    by_processes, _, _ = _pretrained(synthetic, "srs.distributed.backend=torch", "srs.max_epochs=3")
    by_tasks, _, trained = _pretrained(synthetic, "srs.distributed.backend=torch", "srs.distributed.local_mode=false",
                                       "srs.max_epochs=3")
    assert trained["processes"] == 2
    assert np.allclose(by_tasks.to_numpy(), by_processes.to_numpy(), atol=1e-6), (by_tasks, by_processes)


@pytest.mark.skipif(importlib.util.find_spec("horovod") is None,
                    reason="Horovod is not installed (scripts/build_horovod.sh builds it)")
def test_horovod_backend_trains_like_torch_distributor(synthetic):
    by_torch, _, _ = _pretrained(synthetic, "srs.distributed.backend=torch", "srs.max_epochs=4")
    by_horovod, _, trained = _pretrained(synthetic, "srs.distributed.backend=horovod", "srs.max_epochs=4")
    assert trained["processes"] == 2
    # same shards, batches, seeds and sums of two gradients: the same model
    assert np.allclose(by_horovod.to_numpy(), by_torch.to_numpy(), atol=1e-6), (by_horovod, by_torch)


def test_horovod_backend_without_horovod_says_how_to_build_it(synthetic, monkeypatch):
    monkeypatch.setitem(sys.modules, "horovod.spark", None)
    ctx = RunContext(load_config(overrides=[*synthetic, "srs.distributed.backend=horovod"]))
    with pytest.raises(TslrecError, match="scripts/build_horovod.sh"):
        srs_stages.pretrain(ctx)


def test_worker_processes_and_ranks_are_not_combined(synthetic):
    ctx = RunContext(load_config(overrides=[*synthetic, "srs.distributed.backend=torch", "train.workers=2",
                                            "train.variants=[base]"]))
    with pytest.raises(TslrecError, match="train.workers"):
        srs_stages.train(ctx)


def test_a_killed_training_resumes_from_its_checkpoint_with_the_same_result(synthetic, monkeypatch, tmp_path):
    ctx = RunContext(load_config(overrides=[*synthetic, "srs.max_epochs=6", "srs.patience=6", "srs.eval_every=1"]))
    data = load_sequences(ctx)
    checkpoint = tmp_path / "model.pt"
    whole = srs_train.train_model(ctx, data, "gru4rec", "base", 3)

    validate, calls = srs_train._validate, []

    def killed_in_epoch_4(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return validate(*args)

    monkeypatch.setattr(srs_train, "_validate", killed_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        srs_train.train_model(ctx, data, "gru4rec", "base", 3, checkpoint=checkpoint)
    assert torch.load(checkpoint, weights_only=True)["progress"]["epoch"] == 3
    monkeypatch.setattr(srs_train, "_validate", validate)
    resumed = srs_train.train_model(ctx, data, "gru4rec", "base", 3, checkpoint=checkpoint)
    assert (resumed.epochs, resumed.best_epoch, resumed.valid) == (whole.epochs, whole.best_epoch, whole.valid)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
