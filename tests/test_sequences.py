import pytest

from conftest import ROOT
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
    stats = ctx.lake.read_arrow("dataset_stats", where={"run_id": ctx.run_id}).to_pylist()[0]
    return ctx, written, user_sequences(ctx), stats


def user_sequences(ctx) -> dict[str, tuple]:
    """Raw user id -> (items, train items, valid item, test item, length), items as raw ids."""
    users = {r["user_idx"]: r["user_id"] for r in ctx.lake.read_arrow("user_index").to_pylist()}
    items = {r["item_idx"]: int(r["item_id"]) for r in ctx.lake.read_arrow("item_index").to_pylist()}
    rows = {}
    for r in ctx.lake.read_arrow("user_sequences", where={"run_id": ctx.run_id}).to_pylist():
        as_raw = lambda xs: [items[x] for x in xs]  # noqa: E731
        rows[users[r["user_idx"]]] = (
            as_raw(r["items"]), as_raw(r["train_items"]),
            items.get(r["valid_item"]), items.get(r["test_item"]), r["n_items"],
        )
    return rows


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


def test_movielens_ratings_file_keeps_the_files_order_within_a_second(make_context, tmp_path):
    """MovieLens' ratings.dat through the shipped input layer, as the reference code reads it: 5-core, and films
    rated in the same second in the file's order (its stable sort by time)."""
    ratings = {  # user -> (film, second) in the file's order
        1: [(13, 300), (11, 100), (14, 200), (12, 200), (15, 500), (10, 50), (99, 400)],
        2: [(12, 60), (11, 60), (10, 60), (13, 70), (15, 80), (14, 80)],
        3: [(15, 5), (14, 6), (13, 7), (12, 8), (11, 9), (10, 9)],
        4: [(10, 1), (11, 1), (12, 1), (13, 1), (14, 1), (15, 1)],
        5: [(15, 9), (10, 9), (14, 3), (11, 3), (13, 1), (12, 1)],
    }
    path = tmp_path / "ratings.dat"
    path.write_text("".join(f"{user}::{film}::4::{978300000 + second}\n"
                            for user, rows in ratings.items() for film, second in rows))
    ctx = make_context(f"dataset.path={path}", dataset="ml-1m", files=[ROOT / "conf/inputs/movielens-ratings.yaml"])
    ingest.run(ctx)
    sequences.run(ctx)
    assert {user: row[0] for user, row in user_sequences(ctx).items()} == {
        "1": [10, 11, 14, 12, 13, 15],  # film 99 has one user: the 5-core sets it aside
        "2": [12, 11, 10, 13, 15, 14],
        "3": [15, 14, 13, 12, 11, 10],
        "4": [10, 11, 12, 13, 14, 15],
        "5": [13, 12, 14, 11, 15, 10],
    }
    held = ctx.lake.read_arrow("quarantine", where={"run_id": ctx.run_id}).to_pylist()
    assert [(r["src_row"], r["reason_code"]) for r in held] == [(7, "kcore")]
