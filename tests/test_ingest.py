import datetime as dt
import gzip
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tslrec.config import load_config
from tslrec.context import RunContext
from tslrec.data import ingest
from tslrec.errors import TslrecError
from tslrec.lake import Lake
from tslrec.pipeline import run_stages, select_stages

from conftest import ROOT, TEST_SPARK


def run_ingest(ctx):
    return {w.table: w for w in ingest.run(ctx)}


def interactions(ctx):
    """(raw user, raw item, event_time, src_row, src_pos) of the run, in a stable order."""
    lake, where = ctx.lake, {"run_id": ctx.run_id}
    users = {r["user_idx"]: r["user_id"] for r in lake.read_arrow("user_index").to_pylist()}
    items = {r["item_idx"]: r["item_id"] for r in lake.read_arrow("item_index").to_pylist()}
    rows = lake.read_arrow("interactions", where=where).to_pylist()
    return sorted(
        (users[r["user_idx"]], items[r["item_idx"]], r["event_time"], r["src_row"], r["src_pos"])
        for r in rows
    )


def quarantine(ctx):
    rows = ctx.lake.read_arrow("quarantine", where={"run_id": ctx.run_id}).to_pylist()
    return sorted(rows, key=lambda r: (r["src_row"], r["src_pos"] or 0))


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_user_items_round_trip(make_context, tmp_path):
    path = write(tmp_path, "u.txt", "1 10 11 12\n2 11\n3 012 10\n")
    ctx = make_context("dataset.format=user_items", f"dataset.path={path}")
    out = run_ingest(ctx)
    assert out["interactions"].rows == 6 and out["quarantine"].rows == 0
    assert interactions(ctx) == [
        ("1", "10", None, 1, 0), ("1", "11", None, 1, 1), ("1", "12", None, 1, 2),
        ("2", "11", None, 2, 0), ("3", "10", None, 3, 1), ("3", "12", None, 3, 0),
    ]
    # dense ids in numeric order of the raw ids; "012" is the integer 12
    index = ctx.lake.read_arrow("item_index").to_pylist()
    assert sorted((r["item_id"], r["item_idx"]) for r in index) == [("10", 0), ("11", 1), ("12", 2)]
    report = ctx.lake.read_arrow("ingest_report").to_pylist()[0]
    assert (report["records"], report["events"], report["users"], report["items"]) == (3, 6, 3, 3)


def test_user_items_malformed_lines_are_quarantined_with_line_numbers(make_context, tmp_path):
    path = write(tmp_path, "u.txt", "1 10 11\n\n2 x 12\n7\nab 10\n3 10 -4\n4 10\n99999999999999999999 10\n5 10 18446744073709551616\n")
    ctx = make_context("dataset.format=user_items", f"dataset.path={path}", "ingest.max_bad_fraction=0.9")
    run_ingest(ctx)
    bad = [(r["src_row"], r["reason_code"], r["reason"], r["raw"]) for r in quarantine(ctx)]
    assert bad == [
        (2, "malformed", "expected a user id then at least one item id, found 0 field(s)", ""),
        (3, "malformed", "item id 'x' at position 1 is not an integer", "2 x 12"),
        (4, "malformed", "expected a user id then at least one item id, found 1 field(s)", "7"),
        (5, "malformed", "user id 'ab' is not an integer", "ab 10"),
        (6, "malformed", "item id '-4' at position 2 is not an integer", "3 10 -4"),
        (8, "malformed", "user id '99999999999999999999' is beyond 64-bit integers (set dataset.id_type=string)",
         "99999999999999999999 10"),
        (9, "malformed", "item id '18446744073709551616' at position 2 is beyond 64-bit integers (set "
         "dataset.id_type=string)", "5 10 18446744073709551616"),
    ]
    assert all(r["src_file"].endswith("u.txt") for r in quarantine(ctx))
    assert [(u, i) for u, i, *_ in interactions(ctx)] == [("1", "10"), ("1", "11"), ("4", "10")]


def test_user_item_round_trip_and_reasons(make_context, tmp_path):
    path = write(tmp_path, "ui.txt", "5 7\n5 8\n6 7\n6\n6 7 8\n 6  9 \n")
    ctx = make_context("dataset.format=user_item", f"dataset.path={path}", "ingest.max_bad_fraction=0.5")
    run_ingest(ctx)
    assert [(u, i, row) for u, i, _, row, _ in interactions(ctx)] == [
        ("5", "7", 1), ("5", "8", 2), ("6", "7", 3), ("6", "9", 6)
    ]
    assert [(r["src_row"], r["reason"]) for r in quarantine(ctx)] == [
        (4, "expected 2 fields (user item), found 1"), (5, "expected 2 fields (user item), found 3")
    ]


def test_csv_event_log_times_and_reasons(make_context, tmp_path):
    path = write(
        tmp_path,
        "events.csv",
        "user_id,item_id,timestamp,rating\n"
        "1,10,1600000000,5\n"
        "1,11,2020-09-13T12:26:41Z,4\n"
        "2,10,1600000000.5,3\n"
        "2,11\n"
        "3,,1600000000,1\n"
        "3,10,yesterday,2\n"
        "x,10,1600000000,2\n"
        "3,10,,2\n"
        "4,10,1600000000,1,extra\n",
    )
    ctx = make_context("dataset.format=csv", f"dataset.path={path}", "ingest.max_bad_fraction=0.9")
    run_ingest(ctx)
    utc = dt.timezone.utc
    assert [(u, i, t) for u, i, t, *_ in interactions(ctx)] == [
        ("1", "10", dt.datetime(2020, 9, 13, 12, 26, 40, tzinfo=utc)),
        ("1", "11", dt.datetime(2020, 9, 13, 12, 26, 41, tzinfo=utc)),
        ("2", "10", dt.datetime(2020, 9, 13, 12, 26, 40, 500000, tzinfo=utc)),
    ]
    assert [(r["src_row"], r["reason"], r["raw"]) for r in quarantine(ctx)] == [
        (4, "wrong field count: expected 4 fields (user_id, item_id, timestamp, rating)", "2,11"),
        (5, "empty item id", "3,,1600000000,1"),
        (6, "bad timestamp 'yesterday' (expected ISO-8601 or epoch s)", "3,10,yesterday,2"),
        (7, "user id 'x' is not an integer", "x,10,1600000000,2"),
        (8, "missing timestamp", "3,10,,2"),
        (9, "wrong field count: expected 4 fields (user_id, item_id, timestamp, rating)", "4,10,1600000000,1,extra"),
    ]


def test_csv_missing_column_names_the_file_and_the_columns(make_context, tmp_path):
    path = write(tmp_path, "events.csv", "uid,item_id,timestamp\n1,2,3\n")
    ctx = make_context("dataset.format=csv", f"dataset.path={path}")
    with pytest.raises(TslrecError, match=r"events.csv: no column 'user_id' in its header line \(uid, item_id, "
                                          r"timestamp\); every CSV file needs a header naming user_id, item_id"):
        run_ingest(ctx)


def test_csv_files_are_read_by_their_own_headers(make_context, tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    write(folder, "a.csv", "user_id,item_id,timestamp\n1,10,1600000000\n")
    write(folder, "b.csv", "\ufeffitem_id,timestamp,user_id\n20,1600000001,2\n21,1600000002,2\n")
    ctx = make_context("dataset.format=csv", f"dataset.path={folder}")
    run_ingest(ctx)
    assert sorted((u, i) for u, i, *_ in interactions(ctx)) == [("1", "10"), ("2", "20"), ("2", "21")]
    write(folder, "c.csv", "3,30,1600000003\n")  # no header: its first line is a record, not column names
    with pytest.raises(TslrecError, match=r"c.csv: no column 'user_id', 'item_id', 'timestamp' in its header line "
                                          r"\(3, 30, 1600000003\).*or set dataset.csv.header=false"):
        run_ingest(make_context("dataset.format=csv", f"dataset.path={folder}"))


def test_csv_files_behind_a_uri_and_compressed_are_read_by_their_own_headers(make_context, tmp_path):
    """Headers are read through the path's Hadoop file system, as Spark reads the data: the same for a URI (here
    file://) as for a local path, a compressed file's header decompressed, hidden files skipped."""
    folder = tmp_path / "logs"
    folder.mkdir()
    write(folder, "a.csv", "user_id,item_id,timestamp\n1,10,1600000000\n")
    with gzip.open(folder / "b.csv.gz", "wt") as compressed:
        compressed.write("item_id,timestamp,user_id\n20,1600000001,2\n")
    write(folder, "_SUCCESS", "")
    write(folder, ".a.csv.crc", "not,a,header\n")
    ctx = make_context("dataset.format=csv", f"dataset.path=file://{folder}")
    run_ingest(ctx)
    assert sorted((u, i) for u, i, *_ in interactions(ctx)) == [("1", "10"), ("2", "20")]
    # the compressed file's blank lines cannot be counted without a Spark pass: the report says unknown, not 0
    assert ctx.lake.read_arrow("ingest_report").to_pylist()[0]["blank_lines"] is None


def test_blank_csv_lines_are_counted_in_the_report(make_context, tmp_path):
    """Spark's CSV reader skips lines holding only whitespace; the report must still account for them."""
    path = write(tmp_path, "events.csv", "user_id,item_id,timestamp\n1,10,1600000000\n\n   \n2,11,1600000001\n\n"
                                         '3,"12\n",1600000002\n')
    ctx = make_context("dataset.format=csv", f"dataset.path={path}", "ingest.max_bad_fraction=0.9")
    out = run_ingest(ctx)
    report = ctx.lake.read_arrow("ingest_report").to_pylist()[0]
    assert (report["records"], report["blank_lines"], report["interactions"]) == (4, 3, 2)
    # a quoted line break splits its record in two lines, each set aside as malformed, neither lost
    assert [r["raw"] for r in quarantine(ctx)] == ['3,"12', '",1600000002']


def test_missing_input_is_named(make_context, tmp_path):
    ctx = make_context("dataset.format=user_items", f"dataset.path={tmp_path}/nope.txt")
    with pytest.raises(TslrecError, match="nope.txt of dataset 'synthetic' does not exist"):
        run_ingest(ctx)


def test_a_byte_order_mark_or_a_tab_at_a_line_edge_is_not_an_error(make_context, tmp_path):
    path = tmp_path / "u.txt"
    path.write_bytes("\ufeff1 10 11\n\t2 11\t\n3\t10 \r\n".encode("utf-8"))
    ctx = make_context("dataset.format=user_items", f"dataset.path={path}")
    out = run_ingest(ctx)
    assert out["quarantine"].rows == 0
    assert [(u, i) for u, i, *_ in interactions(ctx)] == [("1", "10"), ("1", "11"), ("2", "11"), ("3", "10")]


@pytest.mark.parametrize("case", ["empty file", "empty folder", "folder of empty files"])
def test_an_input_without_data_is_one_clear_error(make_context, tmp_path, case):
    folder = tmp_path / "log"
    folder.mkdir()
    if case == "empty file":
        path = write(tmp_path, "empty.txt", "")
    else:
        path = str(folder)
        if case == "folder of empty files":
            write(folder, "a.txt", "")
            write(folder, "b.txt", "")
    ctx = make_context("dataset.format=user_items", f"dataset.path={path}")
    with pytest.raises(TslrecError, match=f"input {path} of dataset 'synthetic' has no data: "):
        run_ingest(ctx)


def test_parquet_event_log_with_own_column_names_and_millis(make_context, tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    pq.write_table(pa.table({"who": [1, 2, 2], "what": [5, 5, 6], "when": [1_600_000_000_000, 1_600_000_001_000, None]}),
                   folder / "a.parquet")
    pq.write_table(pa.table({"who": [3], "what": [6], "when": [1_600_000_002_000]}), folder / "b.parquet")
    ctx = make_context("dataset.format=parquet", f"dataset.path={folder}", "dataset.columns.user=who",
                       "dataset.columns.item=what", "dataset.columns.timestamp=when", "dataset.timestamp_unit=ms",
                       "ingest.max_bad_fraction=0.5")
    run_ingest(ctx)
    got = [(u, i, t.timestamp(), row) for u, i, t, row, _ in interactions(ctx)]
    assert got == [("1", "5", 1_600_000_000.0, 1), ("2", "5", 1_600_000_001.0, 2), ("3", "6", 1_600_000_002.0, 1)]
    (bad,) = quarantine(ctx)
    assert (bad["src_row"], bad["reason"], Path(bad["src_file"]).name) == (3, "missing timestamp", "a.parquet")
    assert '"who":2' in bad["raw"]


@pytest.mark.parametrize("id_type", ["int", "string"])
def test_integer_columns_get_the_ids_and_reasons_of_their_text(make_context, tmp_path, id_type):
    """Integer id columns skip the text checks: the same rows must come out as from the same values in a CSV file."""
    rows = [(1, 10, 1_600_000_000), (-2, 11, 1_600_000_001), (3, None, 1_600_000_002), (None, 12, 1_600_000_003),
            (7, -5, 1_600_000_004), (4, 13, None), (2**62, 0, 1_600_000_005)]
    users, items, times = zip(*rows)
    table = pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int32()),
                      "timestamp": pa.array(times, pa.int64())})
    (tmp_path / "log").mkdir()
    pq.write_table(table, tmp_path / "log" / "a.parquet")
    text = "user_id,item_id,timestamp\n" + "".join(
        ",".join("" if v is None else str(v) for v in row) + "\n" for row in rows)
    got = {}
    for form, path in (("parquet", tmp_path / "log"), ("csv", write(tmp_path, "log.csv", text))):
        ctx = make_context(f"dataset.format={form}", f"dataset.path={path}", f"dataset.id_type={id_type}",
                           "ingest.max_bad_fraction=1.0", f"lake.root={tmp_path / form}")
        run_ingest(ctx)
        got[form] = ([(u, i, t, row) for u, i, t, row, _ in interactions(ctx)],
                     [(r["src_row"], r["reason"]) for r in quarantine(ctx)])
    assert got["parquet"] == got["csv"]
    bad = {3: "empty item id", 4: "empty user id", 6: "missing timestamp"}
    if id_type == "int":
        bad |= {2: "user id '-2' is not an integer", 5: "item id '-5' is not an integer"}
    assert dict(got["csv"][1]) == bad
    assert [(u, i, row) for u, i, _, row in got["csv"][0]] == sorted(
        [("1", "10", 1), (str(2**62), "0", 7)] + ([] if id_type == "int" else [("-2", "11", 2), ("7", "-5", 5)]))


def test_delta_event_log_with_timestamp_type_and_partitions(make_context, tmp_path):
    when = [dt.datetime(2024, 1, d, tzinfo=dt.timezone.utc) for d in (1, 2, 3)]
    log = pa.table({"user_id": ["a1", "a1", "b2"], "item_id": ["p", "q", "p"], "timestamp": when,
                    "day": ["d1", "d2", "d3"]})
    write_deltalake(str(tmp_path / "events"), log, partition_by=["day"])
    ctx = make_context("dataset.format=delta", f"dataset.path={tmp_path / 'events'}", "dataset.id_type=string")
    run_ingest(ctx)
    assert [(u, i, t) for u, i, t, *_ in interactions(ctx)] == [("a1", "p", when[0]), ("a1", "q", when[1]),
                                                                ("b2", "p", when[2])]


def test_too_many_bad_records_fail_with_examples_and_keep_the_quarantine(make_context, tmp_path):
    path = write(tmp_path, "u.txt", "1 10\n2 x\n3 y\n4 11\n")
    ctx = make_context("dataset.format=user_items", f"dataset.path={path}", "ingest.max_bad_fraction=0.25")
    with pytest.raises(TslrecError) as info:
        run_ingest(ctx)
    message = str(info.value)
    assert "2 of 4 records are malformed (50.00%)" in message
    assert "u.txt:2: item id 'x' at position 1 is not an integer" in message
    assert "ingest.max_bad_fraction" in message
    assert [r["src_row"] for r in quarantine(ctx)] == [2, 3]
    assert not ctx.lake.exists("interactions")


LINE_KINDS = st.sampled_from(["ok", "ok", "ok", "empty", "one_field", "three_fields", "bad_user", "bad_item"])


def render(kind: str, rng: random.Random) -> str:
    user, item = rng.randint(1, 6), rng.randint(1, 9)
    return {
        "ok": f"{user} {item}",
        "empty": "",
        "one_field": f"{user}",
        "three_fields": f"{user} {item} {item}",
        "bad_user": f"u{user} {item}",
        "bad_item": f"{user} {item}.0",
    }[kind]


# every example is a Spark job of seconds: no shrinking, the failing example is printed as generated
@settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(LINE_KINDS, min_size=1, max_size=40), seed=st.integers(0, 10**6),
       policy=st.sampled_from(["none", "first", "consecutive"]))
def test_rows_in_equal_rows_kept_plus_rows_quarantined(make_context, tmp_path_factory, kinds, seed, policy):
    rng = random.Random(seed)
    lines = [render(kind, rng) for kind in kinds]
    path = write(tmp_path_factory.mktemp("prop"), "ui.txt", "\n".join(lines) + "\n")
    ctx = make_context("dataset.format=user_item", f"dataset.path={path}", "ingest.max_bad_fraction=1.0",
                       f"ingest.duplicates={policy}", f"lake.root={path}.lake")
    run_ingest(ctx)
    kept = interactions(ctx)
    held = quarantine(ctx)
    assert len(kept) + len(held) == len(lines)
    assert sorted([row for *_, row, _ in kept] + [r["src_row"] for r in held]) == list(range(1, len(lines) + 1))
    bad_lines = {i + 1 for i, kind in enumerate(kinds) if kind != "ok"}
    assert {r["src_row"] for r in held if r["reason_code"] == "malformed"} == bad_lines


RECORD = st.tuples(st.sampled_from(["ok", "ok", "ok", "ok", "bad_user", "bad_time"]), st.integers(1, 5),
                   st.integers(1, 7), st.integers(0, 3))  # kind, user, item, timestamp (few: exact duplicates)


def render_log(folder: Path, form: str, records: list[tuple[str, int, int, int]]) -> tuple[str, int, int]:
    """The records written in `form`: (path, units in, malformed units). A unit is what ends as one row of
    interactions or quarantine: a record, except for user_items, where a good line gives one per item and a bad
    line one (each user's good records go on its own lines, in order, a bad line between them)."""
    if form == "user_items":
        lines, units = [], 0
        for kind, user, item, _ in records:
            if kind == "ok":
                lines.append(f"{user} {item}")
            else:
                lines.append(f"x{user} {item} {item}")
            units += 1
        return write(folder, "log.txt", "\n".join(lines) + "\n"), units, sum(k != "ok" for k, *_ in records)
    bad = sum(k != "ok" for k, *_ in records)
    if form == "user_item":
        text = "".join(f"{'u' if k == 'bad_user' else ''}{u} {i}{' extra' if k == 'bad_time' else ''}\n"
                       for k, u, i, _ in records)
        return write(folder, "log.txt", text), len(records), bad
    users = [f"u{u}" if k == "bad_user" else str(u) for k, u, _, _ in records]
    items = [str(i) for _, _, i, _ in records]
    times = [None if k == "bad_time" else 1_600_000_000 + t for k, _, _, t in records]
    if form == "csv":
        text = "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{'' if t is None else t}\n"
                                                      for u, i, t in zip(users, items, times))
        return write(folder, "log.csv", text), len(records), bad
    table = pa.table({"user_id": users, "item_id": items, "timestamp": pa.array(times, pa.int64())})
    if form == "parquet":
        (folder / "log").mkdir()
        pq.write_table(table, folder / "log" / "part-0.parquet")
    else:
        write_deltalake(str(folder / "log"), table)
    return str(folder / "log"), len(records), bad


@settings(max_examples=3, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(RECORD, min_size=1, max_size=30), policy=st.sampled_from(["none", "exact", "first", "consecutive"]),
       kcore=st.sampled_from([(0, 0), (2, 0), (0, 2), (2, 2), (3, 2)]))
@pytest.mark.parametrize("form", ["user_items", "user_item", "csv", "parquet", "delta"])
def test_every_record_is_kept_or_quarantined_with_its_reason_in_every_format(make_context, tmp_path_factory, form,
                                                                             records, policy, kcore):
    folder = tmp_path_factory.mktemp(form)
    path, units, malformed = render_log(folder, form, records)
    ctx = make_context(f"dataset.format={form}", f"dataset.path={path}", "ingest.max_bad_fraction=1.0",
                       f"ingest.duplicates={policy}", f"ingest.kcore.user={kcore[0]}", f"ingest.kcore.item={kcore[1]}",
                       f"lake.root={folder / 'lake'}")
    run_ingest(ctx)
    kept = interactions(ctx)
    held = Counter(r["reason_code"] for r in quarantine(ctx))
    assert set(held) <= {"malformed", "duplicate", "kcore"}
    assert held["malformed"] == malformed
    assert len(kept) + held["malformed"] + held["duplicate"] + held["kcore"] == units  # nothing silently dropped
    report = ctx.lake.read_arrow("ingest_report").to_pylist()[0]
    assert (report["interactions"], report["duplicates"], report["kcore_removed"]) == (
        len(kept), held["duplicate"], held["kcore"])
    if policy == "none":
        assert held["duplicate"] == 0
    if kcore == (0, 0):
        assert held["kcore"] == 0


def event_log(tmp_path, rows):
    return write(tmp_path, "e.csv", "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))


@pytest.mark.parametrize(
    "policy, kept",
    [
        ("none", 6),
        ("exact", 5),  # the second (1, 10, 100) only
        ("first", 3),  # the three repeats of (1, 10)
        ("consecutive", 4),  # 10 right after 10, twice (t=100 and t=200); 10 at t=400 follows 11
    ],
)
def test_duplicate_policies(make_context, tmp_path, policy, kept):
    """Malformed records among the events (read in the same pass) are never taken for duplicates, nor do they
    break a run of repeats."""
    rows = [(1, 10, 100), (1, 10, 100), (1, "x", 150), (1, 10, 200), (1, 11, 300), (1, 10, 400), (2, 10, 100),
            (2, "y", 150)]
    ctx = make_context("dataset.format=csv", f"dataset.path={event_log(tmp_path, rows)}", f"ingest.duplicates={policy}",
                       "ingest.max_bad_fraction=0.5")
    out = run_ingest(ctx)
    assert out["interactions"].rows == kept
    held = quarantine(ctx)
    duplicates = [r for r in held if r["reason_code"] == "duplicate"]
    assert len(duplicates) == 6 - kept and all(policy in r["reason"] for r in duplicates)
    assert sorted(r["src_row"] for r in held if r["reason_code"] == "malformed") == [3, 8]
    assert len(held) == len(duplicates) + 2


def kcore_reference(events, k_user, k_item):
    events = list(events)
    while True:
        users = Counter(u for u, _ in events)
        items = Counter(i for _, i in events)
        left = [(u, i) for u, i in events if users[u] >= k_user and items[i] >= k_item]
        if len(left) == len(events):
            return left
        events = left


def test_kcore_matches_a_reference(make_context, tmp_path):
    rng = random.Random(3)
    events = [(rng.randint(1, 40), int(rng.paretovariate(1.2)) % 60 + 1) for _ in range(500)]
    path = write(tmp_path, "ui.txt", "".join(f"{u} {i}\n" for u, i in events))
    ctx = make_context("dataset.format=user_item", f"dataset.path={path}", "ingest.kcore.user=8",
                       "ingest.kcore.item=5", "ingest.duplicates=none")
    out = run_ingest(ctx)
    expected = Counter(kcore_reference(events, 8, 5))
    assert Counter((int(u), int(i)) for u, i, *_ in interactions(ctx)) == expected
    held = quarantine(ctx)
    assert len(held) == len(events) - sum(expected.values()) == out["quarantine"].rows
    assert {r["reason_code"] for r in held} == {"kcore"}
    assert any("round 2" in r["reason"] for r in held)  # the filter had to repeat


def test_ids_are_stable_across_runs_and_new_ids_come_after(make_context, tmp_path):
    first_log = write(tmp_path, "a.txt", "5 50 51\n7 51\n")
    first = make_context("dataset.format=user_items", f"dataset.path={first_log}")
    run_ingest(first)
    versions = {t: first.lake.version(t) for t in ("user_index", "item_index")}
    rerun = run_ingest(first)
    assert "user_index" not in rerun and "item_index" not in rerun
    assert {t: first.lake.version(t) for t in versions} == versions
    later_log = write(tmp_path, "b.txt", "3 49\n7 51 52\n")
    later = make_context("dataset.format=user_items", "run.id=later", f"dataset.path={later_log}")
    run_ingest(later)
    items = {r["item_id"]: (r["item_idx"], r["first_run_id"]) for r in later.lake.read_arrow("item_index").to_pylist()}
    assert items == {"50": (0, "synthetic"), "51": (1, "synthetic"), "49": (2, "later"), "52": (3, "later")}
    users = {r["user_id"]: r["user_idx"] for r in later.lake.read_arrow("user_index").to_pylist()}
    assert users == {"5": 0, "7": 1, "3": 2}
    (report,) = later.lake.read_arrow("ingest_report", where={"run_id": "later"}).to_pylist()
    # the run's distinct ids are counted in the numbering pass: known and new ones together
    assert [report[k] for k in ("users", "items", "new_users", "new_items")] == [2, 3, 1, 2]
    assert [(u, i) for u, i, *_ in interactions(later)] == [("3", "49"), ("7", "51"), ("7", "52")]


MEETING_INGEST = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tslrec.config import load_config
    from tslrec.context import RunContext
    from tslrec.data import ingest
    from tslrec.lake import Lake

    meeting, me = Path(sys.argv[1]), sys.argv[2]
    commit_files = Lake._commit_files

    def meet_then_commit(self, name, *args, **kwargs):
        # the first commit to user_index waits until the other process has numbered its users too
        if name == "user_index" and not (meeting / f"{me}.met").exists():
            (meeting / f"{me}.ready").touch()
            deadline = time.monotonic() + 300
            while len(list(meeting.glob("*.ready"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            (meeting / f"{me}.met").touch()
        return commit_files(self, name, *args, **kwargs)

    Lake._commit_files = meet_then_commit
    ingest.run(RunContext(load_config(overrides=sys.argv[3:])))
    """
)


def test_two_ingests_at_once_never_hand_out_the_same_id(spark, tmp_path):
    """Two processes number their new users from the same registry version and commit at the same moment: one
    commit lands, the other is refused and numbers its users again from the new version."""
    lake = tmp_path / "lake"
    first = write(tmp_path, "a.txt", "1 10\n2 10\n3 11\n")
    second = write(tmp_path, "b.txt", "3 11\n4 12\n5 10\n6 12\n")
    bootstrap = write(tmp_path, "boot.txt", "100 10\n")  # the registry exists before both start
    script = tmp_path / "ingest.py"
    script.write_text(MEETING_INGEST)
    common = [*TEST_SPARK, f"lake.root={lake}", "dataset.format=user_items", "dataset.name=shared"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    ingest.run(RunContext(load_config(overrides=[*common, "run.id=boot", f"dataset.path={bootstrap}"])))
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    children = [subprocess.Popen([sys.executable, str(script), str(meeting), name, *common, f"run.id={name}",
                                  f"dataset.path={path}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for name, path in (("first", first), ("second", second))]
    logs = [child.communicate(timeout=900)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert sum("user_index changed while its new ids were numbered" in log for log in logs) == 1
    users = Lake(str(lake)).read_arrow("user_index").to_pylist()
    assert sorted(r["user_id"] for r in users) == ["1", "100", "2", "3", "4", "5", "6"]  # each raw id once
    assert sorted(r["user_idx"] for r in users) == list(range(7))  # each number once
    for name, path in (("first", first), ("second", second)):
        ctx = RunContext(load_config(overrides=[*common, f"run.id={name}", f"dataset.path={path}"]))
        assert [u for u, *_ in interactions(ctx)] == sorted(line.split()[0] for line in Path(path).read_text().split("\n") if line)


KILLED_INGEST = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tslrec.config import load_config
    from tslrec.context import RunContext
    from tslrec.lake import Lake
    from tslrec.pipeline import run_stages, select_stages

    ready = Path(sys.argv[1])
    write = Lake.write

    def stall_before_interactions(self, data, name, *args, **kwargs):
        if name == "interactions":  # the id registries and the quarantine are committed by now
            ready.touch()
            time.sleep(600)
        return write(self, data, name, *args, **kwargs)

    Lake.write = stall_before_interactions
    run_stages(RunContext(load_config(overrides=sys.argv[2:])), select_stages(until="ingest"), skip_unchanged=True)
    """
)


def test_an_ingest_killed_between_its_commits_is_run_again_not_skipped(spark, tmp_path):
    """Run 1 ingests log A; run 2, on log B, is SIGKILLed after committing B's quarantine; log A is back: the
    signature is run 1's again, but the quarantine is no longer the version run 1 wrote, so ingest runs again."""
    log = tmp_path / "log.txt"
    first, second = "1 10 11\n2 10\nx 10\n", "1 10 11\n3 12\ny 13\nz 14\n"
    args = [*TEST_SPARK, f"lake.root={tmp_path / 'lake'}", "dataset.format=user_items", f"dataset.path={log}",
            "ingest.max_bad_fraction=0.6", f"run.reports={tmp_path / 'reports'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}

    def tslrec_run():  # what `tslrec run --until ingest` does, in this process
        (outcome,) = run_stages(RunContext(load_config(overrides=args)), select_stages(until="ingest"),
                                skip_unchanged=True)
        return outcome

    log.write_text(first)
    written_at = log.stat().st_mtime_ns
    tslrec_run()
    ctx = RunContext(load_config(overrides=args))
    clean = {table: sorted(map(str, ctx.lake.read_arrow(table).to_pylist()))
             for table in ("interactions", "quarantine", "user_index", "item_index")}
    log.write_text(second)
    script, ready = tmp_path / "killed.py", tmp_path / "ready"
    script.write_text(KILLED_INGEST)
    child = subprocess.Popen([sys.executable, str(script), str(ready), *args], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the ingest ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert sorted(r["raw"] for r in quarantine(ctx)) == ["y 13", "z 14"]  # run 2's, committed before the kill
    log.write_text(first)
    os.utime(log, ns=(written_at, written_at))  # the very input of run 1: the same signature
    assert not tslrec_run().skipped
    assert sorted(r["raw"] for r in quarantine(ctx)) == ["x 10"]
    after = {table: sorted(map(str, ctx.lake.read_arrow(table).to_pylist())) for table in ("interactions", "quarantine")}
    assert after == {table: clean[table] for table in after}
    # users 3 and items 12-14 of the killed run keep their numbers: the registries only grow
    assert len(ctx.lake.read_arrow("user_index")) == len(clean["user_index"]) + 1


def test_rerun_of_a_run_is_idempotent(make_context, tmp_path):
    path = write(tmp_path, "u.txt", "1 10 11\n2 x\n2 11 12 11\n")
    ctx = make_context("dataset.format=user_items", f"dataset.path={path}", "ingest.max_bad_fraction=0.5",
                       "ingest.duplicates=first")
    run_ingest(ctx)
    before = {t: (ctx.lake.version(t), ctx.lake.read_arrow(t).to_pylist()) for t in ("interactions", "quarantine")}
    run_ingest(ctx)
    for table, (version, rows) in before.items():
        assert ctx.lake.version(table) == version + 1
        key = lambda r: tuple(str(v) for v in r.values())  # noqa: E731
        assert sorted(ctx.lake.read_arrow(table).to_pylist(), key=key) == sorted(rows, key=key)


def test_synthetic_default_ingests_with_its_ground_truth(make_context):
    ctx = make_context("synthetic.users=50", "synthetic.items=30", "synthetic.users_per_partition=20")
    out = run_ingest(ctx)
    assert out["quarantine"].rows == 0
    report = ctx.lake.read_arrow("ingest_report").to_pylist()[0]
    assert report["users"] == 50 and report["events"] == out["interactions"].rows
    truth = ctx.lake.read_arrow("synthetic_categories")
    assert truth.num_rows == 30 and set(truth["category"].to_pylist()) <= set(range(ctx.config.synthetic.categories))
