"""The peer benchmark's run folder (benchmarks/peer_sasrec.py --work): what lets a run cut short resume. RecBole's
own resume state needs RecBole's environment and is checked by running the benchmark (README, "Benchmarks")."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peer_sasrec  # noqa: E402
from peer_sasrec import Epoch, Side, Work  # noqa: E402

ARGUMENTS = {"lake": "/lake", "epochs": 200, "seed": 2, "threads": 1, "ledger": "/l.jsonl", "overrides": []}


def test_a_folder_is_resumed_by_the_same_arguments_and_refused_to_others(tmp_path, monkeypatch):
    monkeypatch.setattr(peer_sasrec.ledger, "machine", lambda: "machine A")
    Work(tmp_path).claim(ARGUMENTS)
    monkeypatch.setattr(peer_sasrec.ledger, "machine", lambda: "machine B")
    Work(tmp_path).claim(ARGUMENTS)
    assert Work(tmp_path).machines() == ["machine A", "machine B"]
    with pytest.raises(SystemExit, match="holds a peer run of other arguments"):
        Work(tmp_path).claim({**ARGUMENTS, "seed": 3})


def test_the_lake_is_copied_once(tmp_path):
    source = tmp_path / "source"
    (source / "user_sequences").mkdir(parents=True)
    (source / "user_sequences" / "part").write_text("rows")
    work = Work(tmp_path / "work")
    copy = work.copy_of(source)
    (copy / "user_sequences" / "part").write_text("written by the run")
    assert work.copy_of(source) == copy
    assert (copy / "user_sequences" / "part").read_text() == "written by the run"
    assert not (tmp_path / "work" / "lake.partial").exists()


def test_epochs_logged_by_two_processes_count_once_each_the_last_log(tmp_path):
    work = Work(tmp_path)
    for epoch in (Epoch(1, 10.0, None), Epoch(2, 11.0, None), Epoch(2, 12.0, 0.03), Epoch(3, 9.0, None)):
        work.log_epoch("tslrec", epoch)
    assert work.epochs("tslrec") == [Epoch(1, 10.0, None), Epoch(2, 12.0, 0.03), Epoch(3, 9.0, None)]
    assert Work(tmp_path / "other").epochs("tslrec") == []


def test_a_finished_side_reads_back_as_it_was_kept(tmp_path):
    work = Work(tmp_path)
    assert work.side("RecBole") is None
    side = Side("RecBole", [Epoch(1, 200.0, None), Epoch(5, 210.0, 0.05)], {"label": "recbole-1.2.1", "seed": 2},
                {"event": "start", "users": 3})
    assert work.keep(side) is side
    assert work.side("RecBole") == side
    assert json.loads((tmp_path / "RecBole.json").read_text())["line"] == side.line


def test_tslrecs_line_is_the_last_of_its_seed_finished_since_the_run_began(tmp_path):
    work = Work(tmp_path)
    work.claim(ARGUMENTS)
    began = work.started()
    earlier = (began - peer_sasrec.dt.timedelta(hours=3)).isoformat(timespec="seconds")
    later = (began + peer_sasrec.dt.timedelta(hours=1)).isoformat(timespec="seconds")

    def line(seed, finished_at, label="peer", backbone="sasrec", value=0.0):
        return {"label": label, "backbone": backbone, "seed": seed, "finished_at": finished_at, "test": value}

    older_run = line(2, earlier, value=1.0)
    assert peer_sasrec.run_line([older_run], 2, began) is None  # an earlier run's model of the same seed
    this_run = line(2, later, value=2.0)
    lines = [older_run, this_run, line(3, later), line(2, later, label="base"), line(2, later, backbone="fmlp")]
    assert peer_sasrec.run_line(lines, 2, began) is this_run
