"""LoRA SFT of the LLM under real DeepSpeed ZeRO-3 on CPU, the artefact, and the module with the real SmolLM2."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.file_baton import FileBaton

from tslrec.config import load_config
from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.itemtables import item_vectors, registry_size
from tslrec.llm.artifact import ModelCard, load_artifact
from tslrec.llm.loading import load_model, model_folder, resolve_dtype
from tslrec.llm.module import reconstruction_loss
from tslrec.llm.sft import (MODEL_FIGURES, STALE_BUILD_LOCK_S, _epoch_order, _record, attention_kernel,
                             build_trainable, clear_stale_build_locks, deepspeed_config, micro_batch, model_id_of,
                             restart_configs)
from tslrec.llm.shards import Shard, batch_items, load_shard, user_samples
from tslrec.pipeline import run_stages, select_stages

from conftest import ROOT, TEST_SPARK, kill_and_check_the_workers_die

BIN = Path(sys.executable).parent
# float32, the default LoRA dropout (its masks are drawn again the same after a resume); 3 epochs of ~11 steps per
# worker, a checkpoint every 4 steps
SFT = ["llm.model=tiny", "llm.dtype=float32", "sft.processes=2", "sft.epochs=3",
       "sft.micro_batch_size=8", "sft.lr=0.003", "sft.log_every=1", "sft.checkpoint_every=4", "sft.holdout_fraction=0.1"]


@pytest.fixture(scope="module")
def prepared(spark, tmp_path_factory):
    """A small synthetic run up to the user preferences, shared by the tests of this module."""
    folder = tmp_path_factory.mktemp("sft")
    overrides = [*TEST_SPARK, f"lake.root={folder / 'lake'}", f"llm.artifacts={folder / 'artifacts'}",
                 "synthetic.users=200", "synthetic.items=60", "synthetic.users_per_partition=100",
                 "srs.max_epochs=2", "srs.device=cpu", "pregroup.k=6"]
    run_stages(RunContext(load_config(overrides=overrides)), select_stages(until="preferences"))
    return overrides


def sft(overrides, *extra, wait=True):
    command = [BIN / "tslrec", "sft", *overrides, *SFT, *extra]
    if wait:
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True)


def model_row(ctx):
    (row,) = ctx.lake.read_arrow("models", where={"run_id": ctx.run_id}).to_pylist()
    return row


def first_and_last_epoch_loss(row):
    """Mean loss of the SFT's first and last epoch: each holds every sample once, so the batches' mix cancels."""
    curve = np.array([loss for _, loss in json.loads(row["loss_curve"])])
    first, *_, last = np.split(curve, 3)  # SFT's 3 epochs, logged every micro-step
    return first.mean(), last.mean()


@pytest.fixture(scope="module")
def trained(prepared):
    result = sft(prepared)
    assert result.returncode == 0, result.stderr[-4000:]
    ctx = RunContext(load_config(overrides=[*prepared, *SFT]))
    return ctx, model_row(ctx), result.stderr


def test_two_process_zero3_sft_learns(trained):
    _, row, log = trained
    assert "launching 2 SFT workers" in log and "on 2 workers" in log
    assert len(json.loads(row["loss_curve"])) == row["micro_steps"] >= 30  # log_every=1: one point per micro-step
    first, last = first_and_last_epoch_loss(row)
    assert last < 0.8 * first
    # held-out users: better than predicting everyone the average distribution (0.79x of its error here)
    assert row["holdout_users"] > 0 and row["holdout_mse"] < 0.9 * row["baseline_average_mse"]
    folder = Path(row["path"])
    sizes = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert sizes < 200_000  # adapter, projector, head, description: never the base model
    assert not (folder.parent.parent / "checkpoints" / row["model_id"]).exists()


def test_artifact_reloads_into_a_plain_model_with_the_same_outputs(trained):
    ctx, row, _ = trained
    module, card = load_artifact(Path(row["path"]), ctx.config.llm, torch.float32)
    assert (card.k, card.model_id) == (row["k"], row["model_id"])
    n_items = registry_size(ctx, "item_index")
    vectors = torch.as_tensor(item_vectors(ctx, "srs_item_embeddings", ctx.run_id, "vector", {"backbone": "sasrec"}, n_items))
    vectors = torch.cat([vectors, torch.zeros(1, vectors.shape[1])])
    error, users = 0.0, 0
    for rank in (0, 1):  # the held-out users of both workers
        held = user_samples(load_shard(ctx, rank, 2, holdout=True))
        items, mask = batch_items(held, np.arange(len(held)), ctx.config.llm.max_items, n_items)
        with torch.no_grad():
            _, predicted = module(vectors[items], torch.as_tensor(mask))
        error += ((predicted.numpy() - held.targets) ** 2).sum()
        users += len(held)
    assert users == row["holdout_users"]
    assert error / users == pytest.approx(row["holdout_mse"], rel=1e-4)


def kill_after_a_checkpoint(prepared, checkpoints, *extra):
    child = sft(prepared, *extra, wait=False)
    deadline = time.monotonic() + 600
    try:
        while not (checkpoints / "inputs.json").is_file():
            assert child.poll() is None, child.stdout.read()[-4000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert (checkpoints / "latest").is_file()


def test_a_killed_run_resumes_at_its_checkpoint_and_ends_the_same(prepared, trained):
    ctx, uninterrupted, _ = trained
    checkpoints = Path(uninterrupted["path"]).parent.parent / "checkpoints" / uninterrupted["model_id"]
    kill_after_a_checkpoint(prepared, checkpoints)
    resumed = sft(prepared)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming" in resumed.stderr
    start = int(resumed.stderr.split("resuming")[1].split("at micro-step ")[1].split()[0])
    row = model_row(ctx)
    assert 4 <= start < row["micro_steps"] and row["trained_micro_steps"] == row["micro_steps"] - start
    assert row["holdout_mse"] == pytest.approx(uninterrupted["holdout_mse"], rel=1e-5)
    assert row["final_loss"] == pytest.approx(uninterrupted["final_loss"], rel=1e-5)


def test_the_launcher_and_workers_die_with_a_killed_sft_command(prepared, tmp_path):
    """torchrun, started by the sft command, would live on with its workers when only the command is killed."""
    kill_and_check_the_workers_die([BIN / "tslrec", "sft", *prepared, *SFT, "sft.epochs=1000", "sft.resume=false",
                                    f"llm.artifacts={tmp_path}"], working="micro-step 2/", log=tmp_path / "sft.log")


def test_one_worker_trains_without_zero_unless_the_file_offloads(tmp_path):
    config = load_config()
    assert deepspeed_config(config, 10, torch.float32, 2)["zero_optimization"]["stage"] == 3
    assert deepspeed_config(config, 10, torch.float32, 1)["zero_optimization"] == {"stage": 0}
    offloading = tmp_path / "offload.json"
    offloading.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}))
    config = load_config(overrides=[f"sft.deepspeed_config={offloading}"])
    assert deepspeed_config(config, 10, torch.bfloat16, 1)["zero_optimization"]["stage"] == 3


class Planted:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["PLANTED_MARKER"]),))


def test_a_planted_sft_checkpoint_is_refused_without_running_it(prepared, trained, tmp_path, monkeypatch):
    _, uninterrupted, _ = trained
    checkpoints = Path(uninterrupted["path"]).parent.parent / "checkpoints" / uninterrupted["model_id"]
    kill_after_a_checkpoint(prepared, checkpoints)
    tag = (checkpoints / "latest").read_text().strip()
    states = sorted((checkpoints / tag).glob("*.pt"))  # each worker's model and optimizer states
    marker = tmp_path / "ran"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    for state in states:
        torch.save({"optimizer_state_dict": Planted(), "module": Planted()}, state)
    again = sft(prepared)
    assert again.returncode != 0 and not marker.exists()
    assert any(f"{state} is not an SFT checkpoint of this version" in again.stderr for state in states)
    shutil.rmtree(checkpoints)


def test_a_checkpoint_made_on_other_input_versions_is_not_resumed(prepared, trained):
    ctx, uninterrupted, _ = trained
    checkpoints = Path(uninterrupted["path"]).parent.parent / "checkpoints" / uninterrupted["model_id"]
    kill_after_a_checkpoint(prepared, checkpoints)
    preferences = ctx.lake.read_arrow("user_preferences", where={"run_id": ctx.run_id})
    ctx.lake.write(preferences, "user_preferences", "replace_run", ctx.commit("preferences"))  # a new version
    again = sft(prepared)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resuming" not in again.stderr and "made on other versions of the input tables" in again.stderr
    row = model_row(ctx)
    assert row["trained_micro_steps"] == row["micro_steps"]
    assert row["holdout_mse"] == pytest.approx(uninterrupted["holdout_mse"], rel=1e-5)  # the same rows


def test_an_adapter_without_safetensors_is_refused_not_unpickled(trained, tmp_path):
    ctx, row, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(row["path"], copy)
    (copy / "adapter" / "adapter_model.safetensors").unlink()
    (copy / "adapter" / "adapter_model.bin").write_bytes(b"planted")
    with pytest.raises(TslrecError, match="adapter_model.safetensors is missing: a model's adapter is read from "
                                          "safetensors only"):
        load_artifact(copy, ctx.config.llm, torch.float32)


def test_artifact_refuses_another_k_or_vector_width(trained):
    ctx, row, _ = trained
    with pytest.raises(TslrecError, match=r"predicts 6 groups but the pre-grouping has K=7"):
        load_artifact(Path(row["path"]), ctx.config.llm, torch.float32, k=7)
    with pytest.raises(TslrecError, match=r"takes item vectors of 64 numbers but srs_item_embeddings has 32"):
        load_artifact(Path(row["path"]), ctx.config.llm, torch.float32, item_dim=32)


def test_forward_equals_the_transformer_over_each_whole_prompt():
    """The shared-instruction forward gives, for every row, the last state of its own whole prompt's final position,
    and the distribution of that state."""
    config = load_config(overrides=["llm.model=tiny", "llm.dtype=float32", "llm.lora.dropout=0.0"])
    module = build_trainable(config, k=4, item_dim=8, dtype=torch.float32).eval()
    torch.manual_seed(1)
    items = torch.randn(3, 5, 8)
    mask = torch.tensor([[False, False, False, True, True], [True] * 5, [False, False, False, False, True]])
    embed = module.llm.get_input_embeddings()
    transformer = module.transformer()
    with torch.no_grad():
        h, distribution = module(items, mask)
        for row in range(3):
            prompt = torch.cat([embed(module.instruction), module.project(items[row][mask[row]]),
                                embed(module.response)])[None]
            whole = transformer(inputs_embeds=prompt).last_hidden_state[0, -1]
            assert torch.allclose(h[row], whole, atol=1e-5)
            assert torch.allclose(distribution[row], torch.softmax(module.head(whole), dim=-1), atol=1e-5)


@pytest.mark.parametrize("model", ["tiny", "smollm2-135m"])
def test_module_forward_does_not_depend_on_batch_padding(model):
    """The real SmolLM2 (and the tiny llama) run through the module; a user's output is the same alone or
    beside a user with more items."""
    config = load_config(overrides=[f"llm.model={model}", "llm.dtype=float32", "llm.lora.dropout=0.0"])
    module = build_trainable(config, k=5, item_dim=16, dtype=resolve_dtype(config.llm, torch.device("cpu"))).eval()
    torch.manual_seed(0)
    items = torch.randn(2, 4, 16)
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    with torch.no_grad():
        h, distribution = module(items, mask)
        alone, _ = module(items[:1, 2:], mask[:1, 2:])
    assert h.shape == (2, module.llm.config.hidden_size) and distribution.shape == (2, 5)
    assert torch.allclose(distribution.sum(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(h[0], alone[0], atol=1e-4)
    if model == "smollm2-135m":
        assert module.llm.config.hidden_size == 576 and module.llm.config.num_hidden_layers == 30


def test_preparing_a_model_on_first_use_leaves_the_random_stream_as_it_was(tmp_path):
    """The SFT seeds, then prepares the model: a first run that converts the bundled model (or writes the tiny one)
    once drew another LoRA and projector initialisation than every later run of the same config."""
    settings = load_config(overrides=["llm.model=tiny", f"llm.cache_dir={tmp_path}"]).llm
    torch.manual_seed(7)
    model_folder(settings)  # prepares the folder: random weights, saved
    first_use = torch.rand(4)
    torch.manual_seed(7)
    model_folder(settings)  # already there
    assert (tmp_path / "tiny" / "config.json").is_file()
    assert torch.equal(first_use, torch.rand(4))


def test_every_models_row_has_every_figure_column(tmp_path):
    """An SFT without held-out users has fewer figures; its row has every figure column, null where it has none, so
    the rows of one lake share a schema (an SFT recording other figures was once refused after training whole)."""
    ctx = RunContext(load_config(overrides=[f"lake.root={tmp_path / 'lake'}"]))
    common = {"sft_seed": 1.0, "micro_steps": 60.0, "trained_micro_steps": 60.0, "seconds": 1.0, "samples_per_s": 9.0,
              "final_loss": 0.2}
    held_out = {"holdout_users": 10.0, "holdout_mse": 0.2, "baseline_average_mse": 0.5, "baseline_pregroup_mse": 0.1}
    for model_id, figures in (("mse", {**common, **held_out}), ("none-held-out", {**common, "holdout_users": 0.0})):
        card = ModelCard(model_id=model_id, base_model="tiny", k=4, item_dim=8, vectors_table="srs_item_embeddings",
                         vectors_run=ctx.run_id, vectors_backbone="sasrec", prompt={}, max_items=50, lora={},
                         level="user", run_id=ctx.run_id, dataset="synthetic", config_hash="0", figures=figures)
        _record(ctx, card, tmp_path / model_id, [(1, 0.5)])
    rows = {r["model_id"]: r for r in ctx.lake.read_arrow("models").to_pylist()}
    assert set(rows) == {"mse", "none-held-out"} and set(MODEL_FIGURES) <= set(rows["none-held-out"])
    assert rows["mse"]["holdout_mse"] == 0.2 and rows["none-held-out"]["holdout_mse"] is None
    card = ModelCard(**{**vars(card), "figures": {**common, "a_new_figure": 1.0}})
    with pytest.raises(ValueError, match="a_new_figure"):
        _record(ctx, card, tmp_path / "new", [])


def test_the_cpu_attention_kernel_gives_the_default_kernels_loss_and_gradients():
    config = load_config(overrides=["llm.model=tiny", "llm.dtype=float32", "llm.lora.dropout=0.0"])
    module = build_trainable(config, k=5, item_dim=16, dtype=torch.float32)
    torch.manual_seed(0)
    items, target = torch.randn(3, 4, 16), torch.softmax(torch.randn(3, 5), dim=1)
    mask = torch.tensor([[False, False, True, True], [True, True, True, True], [False, True, True, True]])
    results = []
    for kernel in (nullcontext(), attention_kernel(cuda=False)):
        module.zero_grad()
        with kernel:
            _, predicted = module(items, mask)
        loss = reconstruction_loss(predicted, target)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}))
    (loss, grads), (math_loss, math_grads) = results
    assert loss == pytest.approx(math_loss, rel=1e-5) and loss > 0
    assert all(torch.allclose(grads[n], math_grads[n], rtol=1e-4, atol=1e-7) for n in grads)
    assert all(g.abs().sum() > 0 for n, g in math_grads.items() if "lora_B" in n)  # through every attention layer


def test_one_worker_without_zero_resumes_and_ends_the_same(prepared, tmp_path):
    """The default single worker trains without ZeRO; its checkpoints resume as ZeRO-3's do. Last in the file: the
    model has the 2-worker model's id (processes and artefact folder do not make another model) and replaces its row."""
    one = ["sft.processes=1", f"llm.artifacts={tmp_path / 'artifacts'}"]
    first = sft(prepared, *one)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "on 1 workers" in first.stderr
    ctx = RunContext(load_config(overrides=[*prepared, *SFT, *one]))
    uninterrupted = model_row(ctx)
    checkpoints = Path(uninterrupted["path"]).parent.parent / "checkpoints" / uninterrupted["model_id"]
    kill_after_a_checkpoint(prepared, checkpoints, *one)
    resumed = sft(prepared, *one)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming" in resumed.stderr
    row = model_row(ctx)
    assert 0 < row["trained_micro_steps"] < row["micro_steps"] == uninterrupted["micro_steps"]
    assert row["holdout_mse"] == pytest.approx(uninterrupted["holdout_mse"], rel=1e-5)
    assert row["final_loss"] == pytest.approx(uninterrupted["final_loss"], rel=1e-5)


def test_a_frozen_llm_trains_only_the_projector_and_the_head(prepared, tmp_path):
    """llm.lora.rank=0: no adapter is made or saved, the LLM's weights stay the base model's, the projector and the
    head learn. After the models of the runs above: this model is another row of the run's models table."""
    frozen = ["sft.processes=1", "llm.lora.rank=0", f"llm.artifacts={tmp_path / 'artifacts'}"]
    result = sft(prepared, *frozen)
    assert result.returncode == 0, result.stderr[-4000:]
    ctx = RunContext(load_config(overrides=[*prepared, *SFT, *frozen]))
    models = ctx.lake.read_arrow("models", where={"run_id": ctx.run_id}).to_pylist()
    (row,) = [m for m in models if m["model_id"] == model_id_of(ctx)]
    hidden, item_dim = 64, row["item_dim"]
    heads = (item_dim + 1) * hidden + (hidden + 1) * row["k"]
    assert f"{heads} trainable parameters" in result.stderr
    folder = Path(row["path"])
    assert not (folder / "adapter").exists()
    module, card = load_artifact(folder, ctx.config.llm, torch.float32)
    assert card.lora["rank"] == 0
    base = load_model(ctx.config.llm, torch.float32).state_dict()
    assert all(torch.equal(t, base[name]) for name, t in module.llm.state_dict().items())
    first, last = first_and_last_epoch_loss(row)
    assert last < 0.8 * first


def test_a_stale_extension_build_lock_is_cleared_and_a_fresh_one_kept(tmp_path, monkeypatch, caplog):
    """A run killed while torch compiled DeepSpeed's CPU ops left the build's lock: torch's own lock then waits on it
    forever. The launcher removes a lock older than any build, and leaves a build under way alone."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, fresh = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock", tmp_path / "other_ext" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    old = time.time() - STALE_BUILD_LOCK_S - 60
    os.utime(stale, (old, old))
    assert not FileBaton(str(stale)).try_acquire()  # what torch's build does: it would wait here
    assert clear_stale_build_locks() == [stale]
    assert fresh.exists() and "deepspeed_shm_comm/lock: a torch extension build lock left 31 minutes ago" in caplog.text
    baton = FileBaton(str(stale))
    assert baton.try_acquire()
    baton.release()


def test_sft_batches_hold_prompts_of_about_one_length_and_cover_every_sample_each_epoch():
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.geometric(0.12, size=1003), 80)  # a long tail, as users' histories have
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    shard = Shard(np.arange(1003), offsets, np.zeros(offsets[-1], dtype=np.int64), np.zeros((1003, 4), np.float32))
    samples, batch, max_items = user_samples(shard), 8, 50
    per_epoch = -(-len(samples) // batch)
    orders = [_epoch_order(samples, epoch, batch, 7, 0, max_items) for epoch in range(2)]
    epochs = [np.stack([micro_batch(order, p, batch) for p in range(per_epoch)]) for order in orders]
    for picks in epochs:
        assert sorted(picks.ravel()[:len(samples)]) == list(range(len(samples)))  # the short last batch wraps
    assert not np.array_equal(epochs[0], epochs[1])
    assert np.array_equal(_epoch_order(samples, 1, batch, 7, 0, max_items), orders[1])  # a resume's batches
    prompt = samples.lengths(max_items)
    padded = prompt[epochs[0]].max(axis=1).sum() * batch
    shuffled = prompt[rng.permutation(per_epoch * batch) % len(samples)].reshape(-1, batch).max(axis=1).sum() * batch
    assert padded < 0.7 * shuffled and padded >= prompt.sum()
    assert len({prompt[b].max() for b in epochs[0][:20]}) > 5  # batches of every length come in random order


def test_restarts_keep_the_one_with_the_lowest_held_out_error_as_the_configs_model(prepared, tmp_path):
    """sft.restarts=2: two SFTs (seeds 1 and 2), each a model of its own; the config's model is a copy of the one
    with the lower held-out error, and stage 2 loads it. Without held-out users there is nothing to choose by."""
    restarts = ["sft.processes=1", "sft.epochs=1", "sft.restarts=2", f"llm.artifacts={tmp_path / 'artifacts'}"]
    result = sft(prepared, *restarts)
    assert result.returncode == 0, result.stderr[-4000:]
    ctx = RunContext(load_config(overrides=[*prepared, *SFT, *restarts]))
    models = {m["model_id"]: m for m in ctx.lake.read_arrow("models", where={"run_id": ctx.run_id}).to_pylist()}
    candidates = [models[model_id_of(RunContext(config))] for config in restart_configs(ctx.config)]
    assert [c["sft_seed"] for c in candidates] == [1.0, 2.0]
    assert candidates[0]["holdout_mse"] != candidates[1]["holdout_mse"]
    best = min(candidates, key=lambda c: c["holdout_mse"])
    kept = models[model_id_of(ctx)]
    assert kept["model_id"] not in {c["model_id"] for c in candidates}
    assert {k: v for k, v in kept.items() if k not in ("model_id", "path", "config_hash")} == \
        {k: v for k, v in best.items() if k not in ("model_id", "path", "config_hash")}
    assert f"restart sft.seed={int(best['sft_seed'])} ({best['model_id']}): held-out error" in result.stderr
    module, card = load_artifact(Path(kept["path"]), ctx.config.llm, torch.float32)
    chosen, _ = load_artifact(Path(best["path"]), ctx.config.llm, torch.float32)
    assert card.model_id == kept["model_id"] and card.config_hash == ctx.config_hash
    assert all(torch.equal(t, chosen.state_dict()[name]) for name, t in module.state_dict().items())
    refused = sft(prepared, *restarts, "sft.holdout_fraction=0")
    assert refused.returncode == 2 and "sft.holdout_fraction=0 holds no users out" in refused.stderr

