"""Recommenders trained for real on a tiny dataset that went through ingest and sequences."""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tslrec import ledger
from tslrec.config import load_config
from tslrec.context import RunContext
from tslrec.data import ingest, sequences
from tslrec.errors import TslrecError
from tslrec.lake import Commit
from tslrec.srs import significance
from tslrec.srs import stages as srs_stages
from tslrec.srs.backbones import BACKBONES, build_backbone
from tslrec.srs.data import evaluation_set, load_sequences, training_rows, windows
from tslrec.srs.evaluate import final_states, is_activity_group, per_user
from tslrec.srs.dropout import Dropout
from tslrec.srs.ensemble import ScoreEnsemble, member_seeds
from tslrec.srs.items import GatedFusion, ItemRepresentation, WithPregroups, build_items, standardise
from tslrec.srs.train import epoch_batches, train_model

from conftest import TEST_SPARK, kill_and_check_the_workers_die

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import results_page  # noqa: E402

ITEMS = 30
# every backbone learns fast and without dropout here; the shape of the nets stays as configured
FAST = [f"srs.backbones.{b}.{k}={v}" for b in BACKBONES for k, v in (("lr", 0.01), ("dropout", 0.0), ("batch_size", 32))]
# FMLP-Rec trains a row per prefix (7x the steps of a sequence epoch here) and learns the walk within 10 epochs
EPOCHS = {"fmlp": ["srs.max_epochs=15"]}
SHORT = ["srs.max_epochs=40", "srs.patience=40", "srs.min_epochs=0", "srs.max_length=10", "srs.activity_groups=2", "srs.device=cpu"]


@pytest.fixture(scope="module")
def walk(spark, tmp_path_factory):
    """60 users, each walking consecutive items (raw ids 1..30, wrapping): the next item is always the last + 1."""
    folder = tmp_path_factory.mktemp("walk")
    rng = random.Random(0)
    lines = []
    for user in range(1, 61):
        start = rng.randrange(ITEMS)
        lines.append(" ".join([str(user)] + [str((start + i) % ITEMS + 1) for i in range(rng.randint(6, 9))]))
    (folder / "walk.txt").write_text("\n".join(lines) + "\n")
    overrides = [*TEST_SPARK, f"lake.root={folder / 'lake'}", f"srs.checkpoints={folder / 'checkpoints'}", "dataset.format=user_items",
                 f"dataset.path={folder / 'walk.txt'}", "dataset.name=walk", *SHORT, *FAST]
    ctx = RunContext(load_config(overrides=overrides))
    ingest.run(ctx)
    sequences.run(ctx)
    return overrides


def context(walk, *extra):
    return RunContext(load_config(overrides=[*walk, *extra]))


@pytest.mark.parametrize("backbone, rows", [(b, rows) for b, cls in BACKBONES.items()
                                            for rows in (["sequence", "prefixes"] if cls.causal else [None])])
def test_each_backbone_learns_the_walk(walk, backbone, rows):
    ctx = context(walk, *([f"srs.backbones.{backbone}.rows={rows}"] if rows else []), *EPOCHS.get(backbone, []))
    data = load_sequences(ctx)
    assert data.n_items == ITEMS
    trained = train_model(ctx, data, backbone, "base", seed=3)
    test = evaluation_set(data, "test", ctx.config.srs.max_length)
    metrics = per_user(trained.model, test, True, 64, torch.device("cpu"))
    assert metrics["HR@5"].mean() >= 0.9, metrics["HR@5"].mean()
    assert trained.valid["NDCG@10"] >= 0.6
    assert trained.best_epoch <= trained.epochs


def test_same_seed_same_model(walk):
    ctx = context(walk, "srs.max_epochs=3")
    data = load_sequences(ctx)
    first = train_model(ctx, data, "sasrec", "base", seed=5)
    second = train_model(ctx, data, "sasrec", "base", seed=5)
    assert first.valid == second.valid
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert (a == b).all(), name


def test_each_stopping_rule_is_recorded(walk):
    data = load_sequences(context(walk))
    capped = train_model(context(walk, "srs.max_epochs=5", "srs.max_seconds=0"), data, "gru4rec", "base", seed=5)
    assert (capped.epochs, capped.stopped_by) == (1, "max_seconds")
    full = train_model(context(walk, "srs.max_epochs=2"), data, "gru4rec", "base", seed=5)
    assert (full.epochs, full.stopped_by) == (2, "max_epochs")
    patient = train_model(context(walk, "srs.max_epochs=40", "srs.patience=1", "srs.eval_every=1"), data, "gru4rec",
                          "base", seed=5)
    assert patient.stopped_by == "patience" and patient.epochs == patient.best_epoch + 1


def test_validation_every_n_epochs_with_patience_in_validations(walk):
    data = load_sequences(context(walk))
    sparse = train_model(context(walk, "srs.max_epochs=7", "srs.eval_every=3"), data, "gru4rec", "base", seed=5)
    assert (sparse.epochs, sparse.stopped_by) == (7, "max_epochs") and sparse.best_epoch in (3, 6, 7)
    late = train_model(context(walk, "srs.max_epochs=40", "srs.eval_every=2", "srs.patience=1", "srs.min_epochs=15"),
                       data, "gru4rec", "base", seed=5)
    assert late.stopped_by == "patience" and late.best_epoch % 2 == 0
    first_allowed = max(late.best_epoch + 2, 15)  # and only at a validation
    assert late.epochs == first_allowed + first_allowed % 2, (late.epochs, late.best_epoch)


@pytest.mark.parametrize("backbone", ["sasrec", "fmlp"])  # FMLP-Rec's forward pass autocasts, SASRec's does not
def test_bfloat16_training_keeps_float32_weights_and_learns(walk, backbone):
    ctx = context(walk, "srs.precision=bf16", *EPOCHS.get(backbone, []))
    data = load_sequences(ctx)
    trained = train_model(ctx, data, backbone, "base", seed=3)
    assert trained.precision == "bf16"
    assert {p.dtype for p in trained.model.parameters()} == {torch.float32}
    assert trained.valid["NDCG@10"] >= 0.6


def fft_filtered(block, x):
    """A filter block's frequency-domain filter as FMLP-Rec's paper writes it, with torch.fft."""
    spectrum = torch.fft.rfft(x, dim=1, norm="ortho") * torch.view_as_complex(block.filter)
    return torch.fft.irfft(spectrum, n=x.shape[1], dim=1, norm="ortho")


@pytest.mark.parametrize("length", [10, 7])
def test_fmlp_filters_are_the_fft_and_the_last_block_gives_the_last_state(length):
    config = load_config(overrides=[f"srs.max_length={length}"])
    model = build_backbone("fmlp", ItemRepresentation(ITEMS, 16), 5, config).eval()
    block = model.blocks[0]
    torch.nn.init.normal_(block.filter)
    x = torch.randn(4, length, model.items.dim)
    filtered = fft_filtered(block, x)
    with torch.no_grad():
        mixed = block.filter_norm(x + filtered)
        expected = block.feed_forward_norm(mixed + block.feed_forward(mixed))
        bases = (model.to_spectrum, model.from_spectrum)
        torch.testing.assert_close(block(x, bases), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(block(x, bases, last_only=True), expected[:, -1:], rtol=1e-5, atol=1e-5)
        inputs = torch.randint(0, ITEMS + 1, (4, length))
        states = model.dropout(model.norm(model.items(inputs) + model.positions.weight))
        for every in model.blocks:
            states = every(states, bases)
        torch.testing.assert_close(model(inputs, None), states[:, -1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("last_only", [False, True])
def test_fmlp_filters_have_the_gradients_of_the_fft(last_only):
    """The filter's product and the last block's folded kernel have hand-made or unusual backward paths."""
    model = build_backbone("fmlp", ItemRepresentation(ITEMS, 16), 5, load_config(overrides=["srs.max_length=9"])).eval()
    block = model.blocks[0]
    torch.nn.init.normal_(block.filter)
    x = torch.randn(4, 9, model.items.dim, requires_grad=True)
    weights = torch.randn(4, 1 if last_only else 9, model.items.dim)

    def gradients(filtered):
        mixed = block.filter_norm(x[:, -1:] + filtered[:, -1:] if last_only else x + filtered)
        out = block.feed_forward_norm(mixed + block.feed_forward(mixed))
        return torch.autograd.grad((out * weights).sum(), [x, block.filter])

    expected = gradients(fft_filtered(block, x))
    out = block(x, (model.to_spectrum, model.from_spectrum), last_only=last_only)
    ours = torch.autograd.grad((out * weights).sum(), [x, block.filter])
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def convolved_caser(model, inputs, users):
    """Caser as its paper and reference code compute it: each window's (window x d) embeddings through Conv2d."""
    batch, length = inputs.shape
    padded = torch.nn.functional.pad(inputs, (model.window - 1, 0), value=model.items.pad)
    x = model.items(padded.unfold(1, model.window, 1)).reshape(batch * length, 1, model.window, model.items.dim)
    vertical = model.vertical(x).flatten(1)
    horizontal = [torch.relu(conv(x).squeeze(3)).amax(dim=2) for conv in model.horizontal]
    z = torch.relu(model.hidden(torch.cat([vertical, *horizontal], dim=1)))
    own = model.users(users).repeat_interleave(length, dim=0)
    return model.out(torch.cat([z, own], dim=1)).view(batch, length, -1)


@pytest.mark.parametrize("window", [5, 3])
def test_caser_projections_give_the_convolutions_states_and_gradients(window):
    config = load_config(overrides=["srs.max_length=12", f"srs.backbones.caser.window={window}"])
    model = build_backbone("caser", ItemRepresentation(ITEMS, 16), 5, config).eval()
    inputs = torch.randint(0, ITEMS + 1, (6, 12))
    inputs[0, :9] = model.items.pad  # a short user: windows over padding
    users = torch.randint(0, 5, (6,))
    states = model(inputs, users)
    expected = convolved_caser(model, inputs, users)
    torch.testing.assert_close(states, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(states)
    ours = torch.autograd.grad((states * weights).sum(), list(model.parameters()))
    theirs = torch.autograd.grad((expected * weights).sum(), list(model.parameters()))
    for name, a, b in zip([n for n, _ in model.named_parameters()], ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def full_window_sasrec(model, inputs):
    """SASRec as the reference computes it: attention over every slot of the window, padding slots included."""
    real = (inputs != model.items.pad)[..., None]
    x = (model.items(inputs) * model.items.dim ** 0.5 + model.positions.weight) * real
    batch, length, dim = x.shape
    later = torch.ones(length, length, dtype=torch.bool).triu(diagonal=1)
    for block in model.blocks:
        heads = block.heads

        def split(t):
            return t.view(batch, length, heads, dim // heads).transpose(1, 2)

        scores = split(block.query(block.attention_norm(x))) @ split(block.key(x)).transpose(-1, -2)
        weights = torch.softmax(scores.masked_fill(later, float("-inf")) / (dim // heads) ** 0.5, -1)
        attended = (weights @ split(block.value(x))).transpose(1, 2).reshape(batch, length, dim)
        x = block.feed_forward_norm(x + block.output(attended))
        x = (x + block.feed_forward(x)) * real
    return model.norm(x) * real


@pytest.mark.parametrize("heads", [1, 2])
def test_sasrec_narrowed_windows_give_the_full_windows_states_and_gradients(heads):
    torch.manual_seed(0)
    config = load_config(overrides=["srs.max_length=50", f"srs.backbones.sasrec.heads={heads}"])
    model = build_backbone("sasrec", ItemRepresentation(ITEMS, 16), 5, config).eval()
    for block in model.blocks:  # non-zero biases: the padding slots' keys and values are the biases
        for projection in (block.query, block.key, block.value):
            torch.nn.init.normal_(projection.bias)
    lengths = [1, 2, 3, 7, 8, 15, 16, 31, 40, 49, 50, 50]
    inputs = torch.full((len(lengths), 50), ITEMS)
    for row, n in enumerate(lengths):
        inputs[row, 50 - n:] = torch.randint(0, ITEMS, (n,))
    weights = torch.randn(len(lengths), 50, 16)
    grads = []
    for states in (model(inputs, None), full_window_sasrec(model, inputs)):
        model.zero_grad()
        (states * weights).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if len(grads) == 1:
            narrowed = states.detach()
    torch.testing.assert_close(narrowed, states.detach(), rtol=1e-5, atol=1e-5)
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_sasrec_merged_padding_slot_drops_out_as_the_slots_it_stands_for():
    torch.manual_seed(0)
    block = build_backbone("sasrec", ItemRepresentation(ITEMS, 16), 5, load_config()).blocks[0].train()
    block.attention_dropout.p = 0.6
    keep = block._keep(torch.Size([200_000, 2]), 43, torch.device("cpu"))
    merged, single = keep[:, 0], keep[:, 1]
    # the sum of 43 slots each kept with probability 0.4 and scaled by 1 / 0.4, over 43: mean 1, variance .6 / (43 * .4)
    assert abs(merged.mean().item() - 1) < 0.01 and abs(merged.var().item() - 0.6 / (43 * 0.4)) < 0.003
    scaled = torch.tensor(1 / block.attention_dropout.keep_probability).item()  # 1 / .4 in float32
    assert abs(single.mean().item() - 1) < 0.02 and set(single.unique().tolist()) == {0.0, scaled}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("p", "bits"), [(0.6, 16), (0.5, 1), (0.75, 2), (0.3125, 4), (77 / 256, 8)])
def test_dropout_keeps_each_value_with_one_minus_p_and_rescales_it(dtype, p, bits):
    torch.manual_seed(0)
    dropout = Dropout(p)
    assert dropout.bits == bits
    x = torch.ones(400_000, dtype=dtype)
    out = dropout(x)
    assert out.dtype == dtype
    kept = out != 0
    keep = 1 - p
    assert abs(dropout.keep_probability - keep) <= 2**-17
    assert abs(kept.float().mean().item() - keep) < 0.005
    assert abs((kept[:-1] & kept[1:]).float().mean().item() - keep**2) < 0.005  # neighbours (one random byte) independent
    for slot in range(8):  # each bit of a random byte or word as fair as the rest
        assert abs(kept[slot::8].float().mean().item() - keep) < 0.01
    assert torch.all(out[kept] == torch.tensor(1 / dropout.keep_probability, dtype=dtype))
    assert torch.equal(dropout.eval()(x), x)


FAULTS_PROBE = """
import ctypes, resource, sys, torch
from tslrec.config import load_config
from tslrec.srs.train import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, set_up_cpu
if sys.argv[1] == "set_up":
    set_up_cpu(load_config())
else:  # glibc's starting thresholds (128 KB), which it raises by itself only after some frees, as a process's past has it
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
def step():  # blocks of 30 MB (below glibc's largest mmap threshold), 90 MB at once, allocated and freed
    blocks = [torch.ones(30 * 2**18) for _ in range(3)]
    return sum(float(block[0]) for block in blocks)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_a_training_process_keeps_freed_memory_for_its_next_step():
    """With its starting thresholds glibc gave each step's MB-sized blocks back to the kernel and faulted them in
    again, page by page."""
    faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS_PROBE, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "set_up")}
    assert faults["default"] > 30 * 3 * 5000 and faults["set_up"] < faults["default"] / 10, faults


def write_pregroups(ctx, groups):
    table = pa.table({"run_id": [ctx.run_id] * len(groups), "item_idx": pa.array(range(len(groups)), pa.int32()),
                      "group": pa.array(groups, pa.int32())})
    ctx.lake.write(table, "item_pregroups", "replace_run", Commit(ctx.run_id, "test", "h"))


def test_ci_reads_item_pregroups_through_the_lake(walk):
    ctx = context(walk)
    groups = [i % 4 for i in range(ITEMS)][::-1]
    write_pregroups(ctx, groups)
    items = build_items(ctx, "ci", ITEMS, 8)
    assert isinstance(items, WithPregroups)
    assert items.group_of[:ITEMS].tolist() == groups and items.group_of[ITEMS].item() == 4
    write_pregroups(ctx, groups[:-1])
    with pytest.raises(TslrecError, match=r"table 'item_pregroups' \(run walk\) has 29 rows .* dataset has 30 items.*"
                                          r"missing item_idx \[29\]"):
        build_items(ctx, "ci", ITEMS, 8)


def test_tslrec_fusion_starts_at_the_scale_of_the_id_embeddings():
    """LLM states share a large offset; fused raw they would dwarf the ID embeddings (norm ~0.1 here)."""
    rng = np.random.default_rng(3)
    vectors = 40.0 + 3.0 * rng.normal(size=(50, 64))
    vectors[:, 5] = 7.0  # a constant dimension must not divide by zero
    torch.manual_seed(0)
    items = GatedFusion(50, 16, vectors.astype(np.float32), dropout=0.0).eval()
    norms = items.table().detach().norm(dim=1)
    assert torch.isfinite(norms).all()
    assert norms.max() < 0.3, norms.max()


def test_standardised_vectors_have_zero_mean_and_unit_spread_per_dimension():
    rng = np.random.default_rng(5)
    vectors = 40.0 + rng.normal(size=(300, 12)) * np.linspace(3.0, 0.1, 12)
    vectors[:, 4] = 7.0
    standard = standardise(vectors)
    assert np.allclose(standard.mean(axis=0), 0.0, atol=1e-9)
    assert np.allclose(np.delete(standard.std(axis=0), 4), 1.0) and not standard[:, 4].any()


def test_tslrec_fusion_is_the_gated_convex_mix():
    """g * e + (1 - g) * P v with g = sigmoid(W [e; P v]): without an external signal (P = 0, zero bias) the ID
    embedding scaled by its gate; padding fuses to zeros."""
    rng = np.random.default_rng(4)
    torch.manual_seed(0)
    fusion = GatedFusion(20, 8, rng.normal(size=(20, 12)).astype(np.float32), dropout=0.0).eval()
    torch.nn.init.zeros_(fusion.project.weight)
    items = torch.arange(20)
    ids = fusion.ids.weight[:20]
    gate = torch.sigmoid(fusion.gate(torch.cat([ids, torch.zeros_like(ids)], dim=-1)))
    assert torch.allclose(fusion(items), gate * ids, atol=1e-7)
    assert torch.equal(fusion.table(), fusion(items))
    assert not fusion(torch.tensor([fusion.pad])).any()


def test_every_representation_scores_items_with_the_rows_of_its_whole_table():
    """The sampled loss scores its targets and negatives with the representation called on them instead of rows of
    `table()`: the same vectors for every representation (without dropout), so BCE trains the same model, only
    without the whole table."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(20, 12)).astype(np.float32)
    representations = [ItemRepresentation(20, 8), WithPregroups(20, 8, rng.integers(0, 4, size=20)),
                       GatedFusion(20, 8, vectors, dropout=0.0)]
    items = torch.as_tensor(rng.integers(0, 20, size=(6, 5)))
    for representation in representations:
        table = representation.table()
        assert table.shape[0] == 20
        assert torch.allclose(representation(items), table[items], atol=1e-6), type(representation).__name__


def test_tslrec_fusion_projects_a_large_batch_through_the_whole_table_with_the_same_result():
    """A batch with more items than the catalogue projects every item once and picks rows; a small one projects its
    own items. Both give each item's own projection, padding included, and the same gradients."""
    rng = np.random.default_rng(6)
    fusion = GatedFusion(30, 8, rng.normal(size=(30, 40)).astype(np.float32), dropout=0.0).eval()
    for shape in ((2, 5), (16, 12)):  # 10 and 192 items against a catalogue of 30 (+ padding)
        items = torch.as_tensor(rng.integers(0, 31, size=shape))
        items[0, 0] = fusion.pad
        picked = fusion._projected(items)
        (picked ** 2).sum().backward()
        gradient, fusion.project.weight.grad = fusion.project.weight.grad, None
        own = fusion.project(fusion.vectors[items])
        (own ** 2).sum().backward()
        assert torch.allclose(picked, own, atol=1e-6)
        assert torch.allclose(gradient, fusion.project.weight.grad, atol=1e-5)
        fusion.project.weight.grad = None


def test_tslrec_fusion_reads_vectors_and_checks_their_shape(walk):
    overrides = ("srs.representation.vectors.table=vectors", "srs.representation.vectors.where={model: m1}",
                     "srs.representation.vectors.column=vector")
    ctx = context(walk, *overrides)
    with pytest.raises(TslrecError, match="table 'vectors' does not exist"):
        build_items(ctx, "tslrec", ITEMS, 8)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(ITEMS, 6)).astype(np.float32)
    order = rng.permutation(ITEMS)
    rows = {"run_id": ["walk"] * (ITEMS + 1), "model": ["m1"] * ITEMS + ["m2"],
            "item_idx": pa.array(list(order) + [0], pa.int32()),
            "vector": [vectors[i].tolist() for i in order] + [[0.0] * 6]}
    ctx.lake.write(pa.table(rows), "vectors", "replace_run", Commit("walk", "test", "h"))
    items = build_items(ctx, "tslrec", ITEMS, 8)
    assert isinstance(items, GatedFusion)
    standard = (vectors - vectors.mean(axis=0)) / vectors.std(axis=0)
    assert np.allclose(items.vectors[:ITEMS].numpy(), standard, atol=1e-5)
    assert not items.vectors[ITEMS].any()
    with pytest.raises(TslrecError, match=r"has 30 rows for 30 distinct items, but the dataset has 31 items and needs "
                                          r"shape \(31 x d\)"):
        build_items(ctx, "tslrec", ITEMS + 1, 8)
    rows["vector"][3] = [0.0] * 5
    ctx.lake.write(pa.table(rows), "vectors", "replace_run", Commit("walk", "test", "h"))
    with pytest.raises(TslrecError, match=r"vectors of different lengths \[5, 6\]"):
        build_items(ctx, "tslrec", ITEMS, 8)


def test_pretrain_exports_embeddings_and_train_uses_them(walk, monkeypatch):
    ctx = context(walk, "srs.max_epochs=5", "train.variants=[base,tslrec]", "train.seeds=[1,2]",
                  "srs.representation.vectors.table=srs_item_embeddings",
                  "srs.representation.vectors.where={backbone: sasrec}", "srs.representation.vectors.column=vector")
    srs_stages.pretrain(ctx)
    embeddings = ctx.lake.read_arrow("srs_item_embeddings", where={"run_id": "walk"})
    assert embeddings.num_rows == ITEMS and sorted(embeddings["item_idx"].to_pylist()) == list(range(ITEMS))
    assert {len(v) for v in embeddings["vector"].to_pylist()} == {64}
    srs_stages.pretrain(ctx)  # a re-run replaces its rows
    assert ctx.lake.read_arrow("srs_item_embeddings").num_rows == ITEMS
    srs_stages.train(ctx)
    metrics = ctx.lake.read_pandas("srs_metrics", where={"run_id": "walk"})
    trained = metrics[metrics["stage"] == "train"]
    assert set(zip(trained["variant"], trained["seed"])) == {("base", 1), ("base", 2), ("tslrec", 1), ("tslrec", 2)}
    assert set(trained["split"]) == {"valid", "test"} and trained["exclude_history"].all()
    assert {"all", "1/2"} <= {g.split(" ")[0] for g in trained["user_group"]}
    per_config = trained[(trained["user_group"] == "all")].groupby(["variant", "seed", "split"]).size()
    assert (per_config == 4).all()  # HR/NDCG @5/@10, once each: no duplicates
    training = ctx.lake.read_pandas("srs_training", where={"run_id": "walk"})
    assert len(training) == 5 and (training["seconds_per_epoch"] > 0).all()
    versions = ctx.lake.version("srs_metrics"), ctx.lake.version("srs_training")
    more = context(walk, "srs.max_epochs=5", "train.variants=[base,tslrec]", "train.seeds=[1,2,3]",
                   "srs.representation.vectors.table=srs_item_embeddings",
                   "srs.representation.vectors.where={backbone: sasrec}", "srs.representation.vectors.column=vector")
    srs_stages.train(more)  # only seed 3 is new: the four finished models are not trained again
    assert ctx.lake.version("srs_training") == versions[1] + 2
    assert len(ctx.lake.read_pandas("srs_training", where={"run_id": "walk"})) == 7
    monkeypatch.setattr(srs_stages, "TRAINING_REVISION", srs_stages.TRAINING_REVISION + 1)
    srs_stages.train(more)  # models made by another revision of the training code do not count as finished
    assert ctx.lake.version("srs_training") == versions[1] + 2 + 6
    values = significance.seed_values(metrics, "train", "test")
    result = {c.metric: c for c in significance.compare(values, ("sasrec", "base"), ("sasrec", "tslrec"))}
    assert result["NDCG@10"].seeds_a == 2 and 0.0 <= result["NDCG@10"].p <= 1.0
    with pytest.raises(TslrecError, match="1 seed\\(s\\) in srs_metrics; a t-test needs at least 2"):
        significance.compare(values[values["seed"] == 1], ("sasrec", "base"), ("sasrec", "tslrec"))


def test_worker_processes_train_the_same_models_as_one_process(walk, tmp_path):
    def sweep(*extra):
        ctx = context(walk, "srs.max_epochs=3", "srs.threads=1", "train.variants=[base,ci]", "train.seeds=[11,12]",
                      "train.skip_finished=false", *extra)
        write_pregroups(ctx, [i % 3 for i in range(ITEMS)])
        srs_stages.train(ctx)
        metrics = ctx.lake.read_pandas("srs_metrics", where={"run_id": "walk"})
        chosen = metrics[metrics["seed"].isin([11, 12]) & (metrics["stage"] == "train")]
        return chosen.set_index(["variant", "seed", "split", "user_group", "metric"])["value"].sort_index()

    ledger_file = tmp_path / "results" / "walk.jsonl"
    in_workers = sweep("train.workers=3", f"ledger.path={ledger_file}", "ledger.label=pool")
    assert len(in_workers.xs("all", level="user_group")) == 2 * 2 * 2 * 4  # variants x seeds x splits x metrics
    groups = set(in_workers.xs("test", level="split").index.get_level_values("user_group")) - {"all"}
    assert sum(map(is_activity_group, groups)) == 2  # by history length, and by the target's popularity:
    assert sum(g.startswith(("items 1/2", "items 2/2")) for g in groups) == 2
    alone = sweep("train.workers=1")
    assert in_workers.equals(alone), (in_workers - alone).abs().max()
    lines = ledger.read(ledger_file)  # the pool's models, one line each, written by the parent; not the second sweep
    assert sorted((line["variant"], line["seed"]) for line in lines) == [("base", 11), ("base", 12), ("ci", 11), ("ci", 12)]
    for line in lines:
        for split in ("valid", "test"):
            for metric in ("HR@5", "HR@10", "NDCG@5", "NDCG@10"):
                assert line[split][metric] == in_workers[(line["variant"], line["seed"], split, "all", metric)]
        segments = {g: v for (variant, seed, split, g, metric), v in in_workers.items()
                    if (variant, seed, split, metric) == (line["variant"], line["seed"], "test", "NDCG@10") and g != "all"}
        assert {g: m["NDCG@10"] for g, m in line["test_segments"].items()} == segments
        assert line["label"] == "pool" and line["dataset"] == "walk" and line["stage"] == "train"
        assert line["settings"]["srs.max_epochs"] == 3 and "train.seeds" not in line["settings"]
        assert line["precision"] in ("fp32", "bf16") and line["device"] == "cpu" and line["revision"]
        assert 1 <= line["best_epoch"] <= line["epochs"] and line["seconds_per_epoch"] > 0
    page = results_page.section(results_page.frame(ledger_file.parent))  # the results page's tables from it
    ci = in_workers.xs(("ci", "test", "all", "NDCG@10"), level=["variant", "split", "user_group", "metric"])
    assert f"| sasrec | ci | pool | ce | {lines[0]['precision']} | 2 |" in page
    assert f"{ci.mean():.4f} ± {ci.std(ddof=1):.4f}" in page
    shortest = in_workers.xs(("ci", "test", "NDCG@10"), level=["variant", "split", "metric"])
    shortest = shortest[[g.startswith("1/") for g in shortest.index.get_level_values("user_group")]]
    assert f"| sasrec | ci | pool | ce | {lines[0]['precision']} | 2 |  |  | {shortest.mean():.4f} ± " in page


def test_a_failed_model_in_the_pool_keeps_the_others(walk):
    """The tslrec models fail (their vectors table is missing); the base models trained beside them are written."""
    ctx = context(walk, "srs.max_epochs=2", "srs.threads=1", "train.workers=2", "train.variants=[base,tslrec]",
                  "train.seeds=[21,22]", "srs.representation.vectors.table=no_such_vectors")
    with pytest.raises(TslrecError, match=r"(?s)2 of 4 models failed; the others are in the lake.*"
                                          r"sasrec/tslrec/seed 2\d: TslrecError: table 'no_such_vectors' does not exist"):
        srs_stages.train(ctx)
    training = ctx.lake.read_pandas("srs_training", where={"run_id": "walk"})
    assert set(training[training["seed"] >= 21][["variant", "seed"]].itertuples(index=False)) == {("base", 21), ("base", 22)}


@pytest.mark.parametrize("working", ["epoch 2/", None])
def test_the_pools_workers_die_with_a_killed_train_command(walk, tmp_path, working):
    """Killed while its workers train, or while they still import (a worker had lived on so and trained beside the
    retry, both writing the same checkpoint files)."""
    command = "import sys; from tslrec.cli import main; sys.exit(main(sys.argv[1:]))"
    kill_and_check_the_workers_die(
        [sys.executable, "-c", command, "train", *walk, "srs.max_epochs=100000", "srs.patience=100000", "srs.threads=1",
         "train.workers=2", "train.seeds=[31,32]", "train.variants=[base]", "train.skip_finished=false"],
        working=working, log=tmp_path / "train.log")


def test_only_prefix_rows_are_batched_by_length(walk):
    """Sorting sequence rows by length would weight the positions of short sequences up; prefix rows are one
    target each, so they may be sorted to save padding."""
    data = load_sequences(context(walk))
    spans = {}
    for rows in ("prefixes", "sequence"):
        ctx = context(walk, f"srs.backbones.gru4rec.rows={rows}", "srs.batch_sort_window=100")
        model = build_backbone("gru4rec", build_items(ctx, "base", data.n_items, 8), data.n_users, ctx.config)
        training = training_rows(data, model.every_position)
        batches = epoch_batches(model, training, ctx.config.srs, 8, np.random.default_rng(0))
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(training.users)))
        spans[rows] = [int(np.ptp(training.lengths[batch])) for batch in batches]
    assert max(spans["prefixes"]) <= 1, spans
    assert np.mean(spans["sequence"]) >= 2, spans


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_final_states_are_each_rows_own_state_whatever_its_batch(walk, backbone):
    """Rows batched by length, padding trimmed where the backbone allows (as evaluation scores them): each state is
    that of its row's window alone."""
    ctx = context(walk)
    data = load_sequences(ctx)
    model = build_backbone(backbone, build_items(ctx, "base", data.n_items, 16), data.n_users, ctx.config).eval()
    counts = np.diff(data.offsets)
    rows = np.flatnonzero(counts > 0)
    inputs = windows(data.items, data.offsets[rows], data.offsets[rows + 1], ctx.config.srs.max_length, data.pad)
    users, seen = data.users[rows], []
    with torch.no_grad():
        for chosen, states in final_states(model, inputs, users, counts[rows], 7, torch.device("cpu")):
            seen.extend(chosen.tolist())
            for row, state in zip(chosen, states):
                expected = model(torch.as_tensor(inputs[row][None]), torch.as_tensor(users[row:row + 1]))[0, -1]
                assert torch.allclose(state, expected, atol=1e-5), row
    assert sorted(seen) == list(range(len(rows)))


@pytest.mark.parametrize("backbone", [b for b, cls in BACKBONES.items() if cls.pad_invariant])
def test_pad_invariant_backbones_ignore_leading_padding(walk, backbone):
    ctx = context(walk)
    data = load_sequences(ctx)
    model = build_backbone(backbone, build_items(ctx, "base", data.n_items, 16), data.n_users, ctx.config).eval()
    short = torch.as_tensor([[3, 4, 5], [data.pad, 7, 8]])
    long = torch.cat([torch.full((2, 4), data.pad), short], dim=1)
    users = torch.as_tensor([0, 1])
    with torch.no_grad():
        assert torch.allclose(model(short, users)[:, -1], model(long, users)[:, -1], atol=1e-5)


def test_torch_stages_run_where_spark_is_not_installed(walk):
    """GPU nodes that train the recommenders have no JVM or pyspark: the train command must not need them."""
    blocked = "import sys; sys.modules.update(dict.fromkeys(['pyspark', 'duckdb']))"
    command = f"{blocked}; from tslrec.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", command, "train", *walk, "srs.max_epochs=1", "train.variants=[base]", "train.seeds=[77]"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trained = context(walk).lake.read_pandas("srs_training")
    assert trained[trained["seed"] == 77]["variant"].tolist() == ["base"]


class _Planted:
    """What a planted checkpoint would run when unpickled: here it only leaves a file behind."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_planted_checkpoint_is_refused_without_running_it(walk, tmp_path):
    ctx = context(walk, "srs.max_epochs=1")
    data = load_sequences(ctx)
    checkpoint, marker = tmp_path / "model.pt", tmp_path / "ran"
    torch.save({"model": {}, "optimizer": {}, "progress": _Planted(marker)}, checkpoint)
    with pytest.raises(TslrecError, match=f"{checkpoint} is not a recommender checkpoint of this version"):
        train_model(ctx, data, "gru4rec", "base", seed=1, checkpoint=checkpoint)
    assert not marker.exists()


def test_new_data_trains_the_models_again(spark, tmp_path, caplog):
    """Finished models are skipped only while the tables they read are the ones they were trained on."""
    log_file = tmp_path / "log.txt"
    log_file.write_text("".join(f"{user} {' '.join(str((user + i) % ITEMS + 1) for i in range(6))}\n"
                                for user in range(1, 21)))
    overrides = [*TEST_SPARK, f"lake.root={tmp_path / 'lake'}", f"srs.checkpoints={tmp_path / 'checkpoints'}",
                 "dataset.format=user_items", f"dataset.path={log_file}", "dataset.name=grow", *SHORT, *FAST,
                 "srs.max_epochs=1", "train.variants=[base]", "train.seeds=[1]"]

    def ingest_and_train():
        ctx = RunContext(load_config(overrides=overrides))
        ingest.run(ctx)
        sequences.run(ctx)
        caplog.clear()
        srs_stages.train(ctx)
        return ctx

    ctx = ingest_and_train()
    first = ctx.lake.read_pandas("srs_training", where={"run_id": "grow"})
    with log_file.open("a") as appended:
        appended.write("21 1 2 3 4 5 6\n")
    ingest_and_train()
    assert "already trained" not in caplog.text
    again = ctx.lake.read_pandas("srs_training", where={"run_id": "grow"})
    assert len(again) == 1 and again["settings_hash"][0] != first["settings_hash"][0]
    srs_stages.train(RunContext(load_config(overrides=overrides)))  # the same data: skipped
    assert "sasrec/base/seed 1: already trained in this run with these settings, skipped" in caplog.text


def test_the_ensemble_control_ranks_by_the_sum_of_two_base_models_scores(walk, tmp_path):
    ctx = context(walk, "srs.max_epochs=3", "train.variants=[base,ensemble]", "train.seeds=[41]",
                  f"ledger.path={tmp_path / 'walk.jsonl'}")
    folder = Path(ctx.config.srs.checkpoints) / "walk"
    folder.mkdir(parents=True, exist_ok=True)
    # the same model with other settings: one training beside (fresh), one left by an old run
    beside, left = folder / "train-sasrec-base-seed41-other-d0-r1.pt", folder / "train-sasrec-base-seed41-old-d0-r1.pt"
    beside.touch()
    left.touch()
    os.utime(left, (time.time() - srs_stages.OTHER_CHECKPOINTS_KEPT_S - 60,) * 2)
    srs_stages.train(ctx)
    assert beside.exists() and not left.exists()
    beside.unlink()
    data = load_sequences(ctx)
    members = [train_model(ctx, data, "sasrec", "base", seed).model.eval() for seed in member_seeds(41)]
    test = evaluation_set(data, "test", ctx.config.srs.max_length)
    inputs, users = torch.as_tensor(test.inputs), torch.as_tensor(test.users)
    ensemble = ScoreEnsemble(members)
    with torch.no_grad():
        summed = sum(member(inputs, users)[:, -1] @ member.items.table().T for member in members)
        joined = ensemble(inputs, users)[:, -1] @ ensemble.items.table().T
    torch.testing.assert_close(joined, summed)
    expected = {name: values.mean() for name, values in per_user(ensemble, test, True, 64, torch.device("cpu")).items()}
    lines = {line["variant"]: line for line in ledger.read(tmp_path / "walk.jsonl")}
    assert lines["ensemble"]["test"] == pytest.approx(expected)
    assert lines["ensemble"]["test"] != lines["base"]["test"]  # member 2 changes the ranking
    assert lines["ensemble"]["epochs"] == 2 * lines["base"]["epochs"] == 6
    assert not list(Path(ctx.config.srs.checkpoints).glob("**/*ensemble*"))  # the members' checkpoints served and went


def test_a_models_identity_follows_only_the_settings_it_trains_with(walk):
    """Upstream stages show in the versions of the tables a model reads; other backbones' and representations'
    settings do not touch it, so changing them leaves finished models finished."""
    def identity(backbone, variant, *extra):
        return srs_stages.model_identity(context(walk, *extra), backbone, variant)

    base = identity("sasrec", "base")
    assert base == identity("sasrec", "base", "sft.lr=0.1", "pregroup.k=7", "srs.threads=1", "train.seeds=[9]",
                            "srs.representation.fusion_dropout=0.3", "srs.backbones.gru4rec.lr=0.5")
    assert base != identity("sasrec", "base", "srs.backbones.sasrec.lr=0.5") != identity("sasrec", "base", "srs.loss=bce")
    assert identity("gru4rec", "base") != base
    ci = identity("sasrec", "ci")
    assert ci == identity("sasrec", "ci", "srs.representation.fusion_dropout=0.3")
    assert ci != identity("sasrec", "ci", "srs.representation.pregroups_run=other")
    tslrec = identity("sasrec", "tslrec")
    assert tslrec == identity("sasrec", "tslrec", "srs.representation.pregroups_run=other")
    assert tslrec != identity("sasrec", "tslrec", "srs.representation.fusion_dropout=0.3")
