import pytest

from tslrec.data import ingest, sequences


def build(make_context, tmp_path, *overrides):
    log = tmp_path / "e.csv"
    log.write_text(
        "user_id,item_id,timestamp\n"
        "1,13,300\n1,11,100\n1,12,200\n1,14,200\n1,15,500\n"  # 12 and 14 tie at t=200: file order decides
        "2,11,50\n2,12,60\n"  # two items: a short user
        "3,15,10\n3,14,20\n3,13,30\n"
    )
    ctx = make_context("dataset.format=csv", f"dataset.path={log}", "ingest.duplicates=none", *overrides)
    ingest.run(ctx)
    written = {w.table: w for w in sequences.run(ctx)}
    users = {r["user_idx"]: r["user_id"] for r in ctx.lake.read_arrow("user_index").to_pylist()}
    items = {r["item_idx"]: int(r["item_id"]) for r in ctx.lake.read_arrow("item_index").to_pylist()}
    rows = {}
    for r in ctx.lake.read_arrow("user_sequences", where={"run_id": ctx.run_id}).to_pylist():
        as_raw = lambda xs: [items[x] for x in xs]  # noqa: E731
        rows[users[r["user_idx"]]] = (
            as_raw(r["items"]), as_raw(r["train_items"]),
            items.get(r["valid_item"]), items.get(r["test_item"]), r["n_items"],
        )
    stats = ctx.lake.read_arrow("dataset_stats", where={"run_id": ctx.run_id}).to_pylist()[0]
    return ctx, written, rows, stats


def test_time_order_leave_one_out_and_short_users_kept_for_training(make_context, tmp_path):
    _, written, rows, stats = build(make_context, tmp_path)
    assert rows == {
        "1": ([11, 12, 14, 13, 15], [11, 12, 14], 13, 15, 5),
        "2": ([11, 12], [11, 12], None, None, 2),
        "3": ([15, 14, 13], [15], 14, 13, 3),
    }
    assert written["user_sequences"].rows == 3
    assert (stats["users"], stats["evaluated_users"], stats["items"], stats["interactions"]) == (3, 2, 5, 10)
    assert (stats["short_users"], stats["short_user_policy"]) == (1, "train_only")
    assert stats["density"] == pytest.approx(10 / 15)
    assert (stats["min_length"], stats["max_length"], stats["avg_length"]) == (2, 5, pytest.approx(10 / 3))


def test_short_users_can_be_dropped(make_context, tmp_path):
    _, _, rows, stats = build(make_context, tmp_path, "sequences.short_users=drop")
    assert set(rows) == {"1", "3"}
    assert (stats["users"], stats["short_users"], stats["interactions"]) == (2, 1, 8)


def test_rerun_replaces_the_run(make_context, tmp_path):
    ctx, _, rows, _ = build(make_context, tmp_path)
    version = ctx.lake.version("user_sequences")
    sequences.run(ctx)
    assert ctx.lake.version("user_sequences") == version + 1
    assert ctx.lake.read_arrow("user_sequences").num_rows == len(rows)
