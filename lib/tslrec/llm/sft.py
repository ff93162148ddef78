"""Stage 1, steps 3-5: LoRA fine-tuning of the LLM to reconstruct each user's preference distribution, with
DeepSpeed ZeRO-3 across workers (gloo on CPU, NCCL on GPUs; a single worker trains without ZeRO).

`tslrec sft` launches sft.processes workers with torchrun (one by default) and waits for them; the `deepspeed`
launcher and torchrun can also start `jobs/sft.py` directly. Each worker reads its
own shard of the users. Progress (loss, samples/s, ETA) is logged; every sft.checkpoint_every optimizer steps the
trainable state is checkpointed, and a killed run resumes from the last checkpoint at the same step with the same
data order and the same random draws (each micro-step reseeds from seed, rank and step), unless the input tables
changed since the checkpoint was made. The result is a small artefact (adapter, projector, head, description) and
a row of the `models` table.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.utils.cpp_extension
import yaml
from peft import LoraConfig, get_peft_model
from torch.nn.attention import SDPBackend, sdpa_kernel

from tslrec.config import Config, default_conf_dir, load_config
from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.itemtables import item_groups, item_vectors, registry_size
from tslrec.lake import Written
from tslrec.llm.artifact import ModelCard, copy_artifact, read_card, save_artifact
from tslrec.llm.loading import load_model, load_tokenizer, model_folder, resolve_dtype
from tslrec.llm.module import TSLRecLLM, prompt_tokens, reconstruction_loss
from tslrec.llm.shards import Samples, Shard, batch_items, instance_samples, load_shard, user_samples
from tslrec.logs import get_logger, setup_logging, stage_context
from tslrec.seeds import draws_at
from tslrec.pipeline import select_stages
from tslrec.processes import die_with_parent, module_command
from tslrec.stage_runs import read_versions

log = get_logger(__name__)

STAGE = "sft"
STAGE_ZERO_TABLES = ("srs_item_embeddings",)  # read from pregroup.embeddings_run when it is set
CHECKPOINT_INPUTS = "inputs.json"  # beside the checkpoints: the input table versions they were made on
MODEL_FIGURES = ("sft_seed", "micro_steps", "trained_micro_steps", "seconds", "samples_per_s", "final_loss",
                 "holdout_users", "holdout_mse", "baseline_average_mse",
                 "baseline_pregroup_mse")  # the models table's figure columns


def run(ctx: RunContext) -> list[Written]:
    if "WORLD_SIZE" in os.environ:  # a worker of torchrun or the deepspeed launcher
        die_with_parent()
        train(ctx)
    elif ctx.config.sft.restarts > 1:
        keep_best_restart(ctx)
    else:
        _launch(ctx.config, ctx.config.sft.processes)
    return [Written("models", ctx.lake.version("models"), 1)]


def restart_configs(config: Config) -> list[Config]:
    """One config per restart: seeds seed, seed + 1, ..., each an SFT of one restart (a model of its own)."""
    sft = config.sft
    return [replace(config, sft=replace(sft, seed=sft.seed + r, restarts=1))
            for r in range(sft.restarts)]


def keep_best_restart(ctx: RunContext) -> None:
    """Trains sft.restarts SFTs and makes the one with the lowest held-out error this config's model. The LLM's
    fine-tuning varies strongly with its initialisation (held-out error .244, .081 and .051 for three seeds of one
    config), and the recommenders follow that order (benchmarks/RESULTS.md): its own validation picks the LLM."""
    sft = ctx.config.sft
    if not sft.holdout_fraction:
        raise TslrecError(f"sft.restarts={sft.restarts} keeps the restart with the lowest held-out error, and "
                          "sft.holdout_fraction=0 holds no users out: set it above 0 (e.g. 0.05) or sft.restarts=1")
    seeds = {}
    for config in restart_configs(ctx.config):
        log.info("restart %d of %d: sft.seed=%d", len(seeds) + 1, sft.restarts, config.sft.seed)
        _launch(config, sft.processes)
        seeds[model_id_of(RunContext(config))] = config.sft.seed
    rows = [row for row in ctx.lake.read_arrow("models", where={"run_id": ctx.run_id}).to_pylist()
            if row["model_id"] in seeds]
    best = min(rows, key=lambda row: row["holdout_mse"])
    for row in sorted(rows, key=lambda row: seeds[row["model_id"]]):
        log.info("restart sft.seed=%d (%s): held-out error %.5f%s", seeds[row["model_id"]], row["model_id"],
                 row["holdout_mse"], ", kept" if row is best else "")
    model_id = model_id_of(ctx)
    card = replace(read_card(Path(best["path"])), model_id=model_id, config_hash=ctx.config_hash)
    folder = copy_artifact(Path(best["path"]), card, artifacts_root(ctx) / "models" / model_id)
    _record(ctx, card, folder, json.loads(best["loss_curve"]))


# settings that change how a training runs or where its files go, not the model it makes
NOT_MODEL_SETTINGS = ("infer", "train", "sft.processes", "sft.checkpoint_every", "sft.resume", "sft.log_every",
                      "llm.cache_dir", "llm.artifacts", "llm.device")


def model_id_of(ctx: RunContext) -> str:
    """Stable for a run and the settings the model depends on: re-running replaces the same model."""
    return f"{ctx.run_id}-{ctx.config.sft.level}-{ctx.config.hash(leave_out=NOT_MODEL_SETTINGS)[:8]}"


def artifacts_root(ctx: RunContext) -> Path:
    return Path(ctx.config.llm.artifacts).expanduser().resolve()


# a torch extension build (DeepSpeed's CPU communication ops: ~2 minutes on 2 busy cores) holds its lock no longer
STALE_BUILD_LOCK_S = 30 * 60


def clear_stale_build_locks() -> list[Path]:
    """A run killed while torch compiled an extension leaves the build's lock file, and every later SFT waits on it
    forever (torch's FileBaton records no owner to check). A lock older than any build is removed, with a warning."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or torch.utils.cpp_extension.get_default_build_root())
    now = time.time()
    removed = []
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        try:
            age = now - lock.stat().st_mtime
            if age > STALE_BUILD_LOCK_S:
                lock.unlink()
                removed.append(lock)
                log.warning("removed %s: a torch extension build lock left %.0f minutes ago by a killed run", lock,
                            age / 60)
        except FileNotFoundError:  # its build finished meanwhile
            continue
    return removed


def _launch(config: Config, processes: int) -> None:
    """Runs `processes` workers with torchrun on this machine and waits for them. Even one worker is a process of
    its own: DeepSpeed's process-wide state (process groups, ZeRO-3 hooks) never stays in the caller."""
    clear_stale_build_locks()
    dump = Path(tempfile.mkdtemp(prefix="tslrec-sft-")) / "config.yaml"
    dump.write_text(yaml.safe_dump(config.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    if not _use_cuda(config):
        env["DS_ACCELERATOR"] = "cpu"
    command = module_command("torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                             "-m", "tslrec.llm.sft", str(dump))
    log.info("launching %d SFT workers: %s", processes, " ".join(command))
    result = subprocess.run(command, env=env)
    shutil.rmtree(dump.parent, ignore_errors=True)
    if result.returncode != 0:
        raise TslrecError(f"the SFT workers failed (exit status {result.returncode}); their log is above")


def _use_cuda(config: Config) -> bool:
    return config.llm.device == "cuda" or (config.llm.device == "auto" and torch.cuda.is_available())


def _distributed_environment() -> tuple[int, int, int]:
    """(rank, world, local rank), as the launcher set them."""
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))


def build_trainable(config: Config, k: int, item_dim: int, dtype: torch.dtype) -> TSLRecLLM:
    """The LLM with LoRA adapters (none at rank 0: the LLM frozen), plus projector and head: what trains."""
    settings = config.llm
    llm = load_model(settings, dtype)
    if settings.lora.rank:
        llm = get_peft_model(llm, LoraConfig(r=settings.lora.rank, lora_alpha=settings.lora.alpha,
                                             lora_dropout=settings.lora.dropout,
                                             target_modules=list(settings.lora.targets), bias="none"))
    else:
        llm.requires_grad_(False)
    tokens = prompt_tokens(load_tokenizer(settings), settings.prompt, k)
    return TSLRecLLM(llm, tokens, item_dim, k).to(dtype)


def deepspeed_config(config: Config, optimizer_steps: int, dtype: torch.dtype, world: int) -> dict:
    """sft.deepspeed_config with the run's settings. One worker has nothing to partition: unless the file offloads
    to the CPU or NVMe (which needs ZeRO), it trains without ZeRO, whose gathering of each layer's weights in every
    pass made a step 1.5x slower on a CPU (benchmarks/RESULTS.md)."""
    sft = config.sft
    path = Path(sft.deepspeed_config)
    path = path if path.is_absolute() else default_conf_dir() / path
    base = json.loads(path.read_text())
    if world == 1 and not any(key.startswith("offload") for key in base.get("zero_optimization", {})):
        base["zero_optimization"] = {"stage": 0}
    return {
        **base,
        "train_micro_batch_size_per_gpu": sft.micro_batch_size,
        "gradient_accumulation_steps": sft.gradient_accumulation,
        "gradient_clipping": sft.clip,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "optimizer": {"type": "AdamW", "params": {"lr": sft.lr, "weight_decay": sft.weight_decay, "torch_adam": True}},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "total_num_steps": max(optimizer_steps, 1),
            "warmup_num_steps": max(1, int(sft.warmup_ratio * optimizer_steps)),
            "warmup_min_lr": 0.0, "warmup_max_lr": sft.lr, "warmup_type": "linear"}},
    }


@dataclass(frozen=True)
class Inputs:
    k: int
    n_items: int
    vectors: torch.Tensor  # (n_items + 1, d): the stage-0 item embeddings and an all-zero padding row
    groups: np.ndarray


def _inputs(ctx: RunContext) -> Inputs:
    config = ctx.config
    run = ctx.run_id
    n_items = registry_size(ctx, "item_index")
    k = ctx.lake.read_arrow("item_pregroup_centres", where={"run_id": run}, columns=["group"]).num_rows
    if k == 0:
        raise TslrecError(f"item_pregroup_centres has no groups for run '{run}': run pregroup first")
    vectors = item_vectors(ctx, "srs_item_embeddings", config.pregroup.embeddings_run or run, "vector",
                           {"backbone": config.pretrain.backbone}, n_items)
    padded = torch.cat([torch.as_tensor(vectors), torch.zeros(1, vectors.shape[1])])
    return Inputs(k, n_items, padded, item_groups(ctx, "item_pregroups", run, n_items))


def _input_versions(ctx: RunContext) -> dict[str, int | None]:
    """The version of each table the SFT reads (as last written by the run it reads): a checkpoint made on other
    versions is not resumed."""
    embeddings_run = ctx.config.pregroup.embeddings_run
    return read_versions(ctx, select_stages(only=STAGE)[0].reads,
                         dict.fromkeys(STAGE_ZERO_TABLES, embeddings_run) if embeddings_run else None)


GROUPED_BATCHES = 64  # batches whose samples are sorted by length together: the padding a batch computes shrinks


def _epoch_order(samples: Samples, epoch: int, batch: int, seed: int, rank: int, max_items: int) -> np.ndarray:
    """The order of an epoch's samples, micro-step p taking the p-th run of `batch`: a fixed function of the epoch,
    so a resumed run sees the same batches.

    The samples are shuffled, each run of GROUPED_BATCHES batches is sorted by prompt length and the batches are
    shuffled, so a batch holds prompts of about one length: padded positions cost as much as items, and random
    batches of Beauty's users pad 6.7 items on average to 17.8 (7.0 grouped). A short last batch stays last."""
    rng = np.random.default_rng([seed, epoch, rank])
    order = rng.permutation(len(samples))
    lengths = samples.lengths(max_items)[order]
    order = order[np.lexsort((lengths, np.arange(len(order)) // (batch * GROUPED_BATCHES)))]
    full = len(order) // batch
    return np.concatenate([order[:full * batch].reshape(full, batch)[rng.permutation(full)].ravel(),
                           order[full * batch:]])


def micro_batch(order: np.ndarray, position: int, batch: int) -> np.ndarray:
    """The samples of an epoch's micro-step `position`; the last one is filled up from the epoch's start."""
    return order[(position * batch + np.arange(batch)) % len(order)]


def attention_kernel(cuda: bool) -> AbstractContextManager[None]:
    """On the CPU, attention as plain matmuls and a softmax: PyTorch's CPU flash-attention backward takes ~16 ms a
    call on an SFT batch's short prompts (SmolLM2, bf16, one thread), a quarter of the micro-step; with the math
    kernel a micro-step of 8 prompts is 1.3x faster, of 32 prompts 1.7x."""
    return nullcontext() if cuda else sdpa_kernel([SDPBackend.MATH])


def train(ctx: RunContext) -> None:
    """One worker's part of the SFT (every rank runs this)."""
    config = ctx.config
    llm_settings, sft = config.llm, config.sft
    rank, world, local_rank = _distributed_environment()
    cuda = _use_cuda(config)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    torch.manual_seed(sft.seed)
    inputs = _inputs(ctx)
    samples = _samples(load_shard(ctx, rank, world, holdout=False), inputs, sft.level)
    fewest = _reduced([len(samples)], device, torch.distributed.ReduceOp.MIN)
    if fewest.item() == 0:
        raise TslrecError(f"a worker has no SFT samples: {world} workers for too few users in run '{ctx.run_id}'")
    largest = _reduced([len(samples)], device, torch.distributed.ReduceOp.MAX)
    per_epoch = math.ceil(largest.item() / sft.micro_batch_size)
    total = math.ceil(per_epoch * sft.epochs)
    if sft.max_steps is not None:
        total = min(total, sft.max_steps * sft.gradient_accumulation)
    dtype = resolve_dtype(llm_settings, device)
    model_folder(llm_settings)  # prepare a bundled model before ZeRO-3 is switched on: it must be written whole
    ds_config = deepspeed_config(config, math.ceil(total / sft.gradient_accumulation), dtype, world)
    hf_deepspeed = HfDeepSpeedConfig(ds_config)  # while it lives, ZeRO-3 partitions weights as they load
    module = build_trainable(config, inputs.k, inputs.vectors.shape[1], dtype)
    trainable = [p for p in module.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=module, model_parameters=trainable, config=ds_config)
    _load_weights_only(engine)
    model_id = model_id_of(ctx)
    checkpoints = artifacts_root(ctx) / "checkpoints" / model_id
    read_versions = json.dumps(_input_versions(ctx), sort_keys=True)
    start = 0
    if sft.resume and (checkpoints / "latest").is_file():
        made_on = checkpoints / CHECKPOINT_INPUTS
        if made_on.is_file() and made_on.read_text() == read_versions:
            _, state = engine.load_checkpoint(str(checkpoints), load_module_strict=False)
            start = state["micro_step"]
            log.info("resuming %s at micro-step %d of %d from %s", model_id, start, total, checkpoints)
        else:
            log.warning("the checkpoints at %s were made on other versions of the input tables (now %s): "
                        "training from the start", checkpoints, read_versions)
            torch.distributed.barrier()
            if rank == 0:
                shutil.rmtree(checkpoints, ignore_errors=True)
            torch.distributed.barrier()
    if rank == 0:
        log.info("%s: %s-level SFT of %s on %d workers x %d samples (largest shard), %d micro-steps of %d, %s, "
                 "%d trainable parameters", model_id, sft.level, llm_settings.model, world, largest.item(), total,
                 sft.micro_batch_size, dtype, sum(getattr(p, "ds_numel", p.numel()) for p in trainable))
    started, window, curve = time.monotonic(), [], []
    engine.train()
    order_of: tuple[int, np.ndarray] | None = None  # (epoch, its order)
    for step in range(start, total):
        draws_at(sft.seed, rank, step)  # LoRA dropout's masks: the same after a resume as without one
        epoch, position = divmod(step, per_epoch)
        if order_of is None or order_of[0] != epoch:
            order_of = epoch, _epoch_order(samples, epoch, sft.micro_batch_size, sft.seed, rank, llm_settings.max_items)
        picks = micro_batch(order_of[1], position, sft.micro_batch_size)
        items, mask = batch_items(samples, picks, llm_settings.max_items, inputs.n_items)
        with attention_kernel(cuda):
            _, predicted = engine(inputs.vectors[items].to(device), torch.as_tensor(mask, device=device))
        loss = reconstruction_loss(predicted, torch.as_tensor(samples.targets[picks], device=device))
        engine.backward(loss)
        engine.step()
        window.append(loss.item())
        done = step + 1
        if done % (sft.checkpoint_every * sft.gradient_accumulation) == 0 and done < total:
            engine.save_checkpoint(str(checkpoints), tag=f"micro-{done}", client_state={"micro_step": done},
                                   exclude_frozen_parameters=True)
            if rank == 0:  # after the checkpoint: a kill in between leaves a mismatch, so a start from scratch
                (checkpoints / CHECKPOINT_INPUTS).write_text(read_versions)
        if rank == 0 and (done % sft.log_every == 0 or done == total):
            elapsed = time.monotonic() - started
            rate = (done - start) * sft.micro_batch_size * world / elapsed
            curve.append((done, float(np.mean(window))))
            log.info("micro-step %d/%d: loss %.5f, %.1f samples/s, %.0fs, ETA %.0fs", done, total, curve[-1][1], rate,
                     elapsed, elapsed / (done - start) * (total - done))
            window = []
    seconds = time.monotonic() - started
    figures = {"sft_seed": float(sft.seed), "micro_steps": float(total), "trained_micro_steps": float(total - start),
               "seconds": seconds,
               "samples_per_s": (total - start) * sft.micro_batch_size * world / max(seconds, 1e-9),
               "final_loss": curve[-1][1] if curve else float("nan"),
               **_holdout_errors(ctx, engine, inputs, samples.shard, device)}
    card = ModelCard(
        model_id=model_id, base_model=llm_settings.model, k=inputs.k, item_dim=inputs.vectors.shape[1],
        vectors_table="srs_item_embeddings", vectors_run=config.pregroup.embeddings_run or ctx.run_id,
        vectors_backbone=config.pretrain.backbone, prompt={"instruction": llm_settings.prompt.instruction,
                                                           "response": llm_settings.prompt.response},
        max_items=llm_settings.max_items, lora={"rank": llm_settings.lora.rank, "alpha": llm_settings.lora.alpha,
                                                "dropout": llm_settings.lora.dropout, "targets": llm_settings.lora.targets},
        level=sft.level, run_id=ctx.run_id, dataset=config.dataset.name, config_hash=ctx.config_hash, figures=figures,
    )
    folder = artifacts_root(ctx) / "models" / model_id
    with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
        if rank == 0:
            save_artifact(module, card, folder)
    torch.distributed.barrier()
    if rank == 0:
        _record(ctx, card, folder, curve)
        shutil.rmtree(checkpoints, ignore_errors=True)
    del hf_deepspeed
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _load_weights_only(engine) -> None:  # type: ignore[no-untyped-def]
    """DeepSpeed unpickles its checkpoints whole; these are read with weights_only (tensors, plain types and the
    two DeepSpeed classes its optimizer state holds), so a file planted in the checkpoint folder cannot run code."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    class WeightsOnly(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            try:
                with torch.serialization.safe_globals([ZeroStageEnum, LossScaler]):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as exc:
                raise TslrecError(f"{path} is not an SFT checkpoint of this version (it holds objects other than "
                                  f"tensors and plain values, and is not loaded); delete its folder to train from "
                                  f"the start") from exc

    engine.checkpoint_engine = WeightsOnly(engine._config)


def _samples(shard: Shard, inputs: Inputs, level: str) -> Samples:
    return user_samples(shard) if level == "user" else instance_samples(shard, inputs.groups, inputs.k)


def _holdout_batches(held: Samples, count: int, batch: int, n_items: int, max_items: int):  # type: ignore[no-untyped-def]
    """(items, mask, picks) for `count` users' worth of batches. Past its own users a worker feeds a prompt without
    items, so every worker makes the same number of forward passes (ZeRO-3 gathers weights collectively)."""
    by_length = np.argsort(held.lengths(max_items), kind="stable")
    for first in range(0, count, batch):
        picks = by_length[first:first + batch]
        if len(picks):
            yield (*batch_items(held, picks, max_items, n_items), picks)
        else:
            yield np.full((1, 1), n_items), np.zeros((1, 1), dtype=bool), picks


def _reduced(values: Any, device: torch.device, op: Any = torch.distributed.ReduceOp.SUM) -> torch.Tensor:
    """The values summed (or op) over the workers, on the CPU: NCCL reduces GPU tensors only, gloo CPU ones."""
    tensor = torch.as_tensor(values).to(device)
    torch.distributed.all_reduce(tensor, op=op)
    return tensor.cpu()


@torch.no_grad()
def _holdout_errors(ctx: RunContext, engine, inputs: Inputs, trained: Shard,  # type: ignore[no-untyped-def]
                    device: torch.device) -> dict[str, float]:
    """Mean squared reconstruction error on the held-out users, beside two baselines (summed over workers):
    the average distribution of the training users, and the distribution of the items the model is shown,
    grouped by the pre-grouping itself (equal to the target unless the history is longer than llm.max_items)."""
    config = ctx.config
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    held = user_samples(load_shard(ctx, rank, world, holdout=True))
    sums = torch.zeros(inputs.k + 1, dtype=torch.float64)
    sums[: inputs.k] = torch.as_tensor(trained.targets.sum(axis=0), dtype=torch.float64)
    sums[inputs.k] = len(trained)
    sums = _reduced(sums, device)
    average = (sums[: inputs.k] / sums[inputs.k]).numpy()
    count = _reduced([len(held)], device, torch.distributed.ReduceOp.MAX)
    engine.eval()
    totals = np.zeros(4)  # users, model, average, pre-grouping baseline
    for items, mask, picks in _holdout_batches(held, count.item(), config.sft.micro_batch_size, inputs.n_items,
                                               config.llm.max_items):
        _, predicted = engine(inputs.vectors[items].to(device), torch.as_tensor(mask, device=device))
        if len(picks):
            target = held.targets[picks]
            shown = np.zeros((len(picks), inputs.k))
            np.add.at(shown, (np.repeat(np.arange(len(picks)), mask.sum(1)), inputs.groups[items[mask]]), 1.0)
            shown /= mask.sum(1, keepdims=True)
            totals += [len(picks), ((predicted.float().cpu().numpy() - target) ** 2).sum(),
                       ((average - target) ** 2).sum(), ((shown - target) ** 2).sum()]
    summed = _reduced(totals, device)
    users, model, by_average, by_groups = summed.tolist()
    engine.train()
    if not users:
        return {"holdout_users": 0.0}
    result = {"holdout_users": users, "holdout_mse": model / users, "baseline_average_mse": by_average / users,
              "baseline_pregroup_mse": by_groups / users}
    if rank == 0:
        log.info("held-out users: %d; reconstruction error (MSE summed over groups) %.5f; baselines: average "
                 "distribution %.5f, pre-grouping of the shown items %.5f", users, result["holdout_mse"],
                 result["baseline_average_mse"], result["baseline_pregroup_mse"])
    return result


def _record(ctx: RunContext, card: ModelCard, folder: Path, curve: list[tuple[int, float]]) -> Written:
    """Every model's row has every figure column, null where its SFT has none (no held-out users): rows of one
    lake share a schema."""
    unknown = set(card.figures) - set(MODEL_FIGURES)
    if unknown:
        raise ValueError(f"figures {sorted(unknown)} have no column in the models table: add them to MODEL_FIGURES")
    row = {"run_id": ctx.run_id, "dataset": card.dataset, "model_id": card.model_id, "path": str(folder),
           "stage": STAGE, "base_model": card.base_model, "level": card.level, "k": card.k, "item_dim": card.item_dim,
           "loss_curve": json.dumps(curve), "config_hash": card.config_hash,
           **{name: card.figures.get(name) for name in MODEL_FIGURES}}
    schema = pa.schema([(name, pa.string()) for name in ("run_id", "dataset", "model_id", "path", "stage",
                                                         "base_model", "level")]
                       + [("k", pa.int64()), ("item_dim", pa.int64()), ("loss_curve", pa.string()),
                          ("config_hash", pa.string())] + [(name, pa.float64()) for name in MODEL_FIGURES])
    return ctx.lake.write(pa.Table.from_pylist([row], schema=schema), "models", "replace_run", ctx.commit(STAGE),
                          within={"model_id": card.model_id})


def main(argv: list[str]) -> int:
    """torchrun's entry: `python -m tslrec.llm.sft CONFIG.yaml` with the resolved config written by _launch."""
    die_with_parent()
    setup_logging()
    config = load_config(files=[argv[0]])
    with stage_context(config.run_id, STAGE):
        train(RunContext(config))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
