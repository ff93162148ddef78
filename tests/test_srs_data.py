import numpy as np

from tslrec.srs.data import (
    Sequences, evaluation_set, ranges, sortish_batches, training_batch, training_rows, trim_padding, windows,
)

PAD = 9


def sequences():
    # user 10: train 1 2 3 4, valid 5, test 6; user 11: train 7 (short: not evaluated); user 12: train 2 3, 4, 8
    return Sequences(users=np.array([10, 11, 12]), offsets=np.array([0, 4, 5, 7]),
                     items=np.array([1, 2, 3, 4, 7, 2, 3]), valid=np.array([5, -1, 4]), test=np.array([6, -1, 8]),
                     n_items=PAD, n_users=13)


def test_ranges_and_windows():
    assert ranges(np.array([5, 0]), np.array([2, 3])).tolist() == [5, 6, 0, 1, 2]
    flat = np.array([1, 2, 3, 4, 5])
    assert windows(flat, np.array([0, 3]), np.array([4, 5]), 3, PAD).tolist() == [[2, 3, 4], [PAD, 4, 5]]


def test_sequence_rows_train_every_position_of_each_user():
    data = sequences()
    rows = training_rows(data, every_position=True)
    inputs, targets, users = training_batch(data, rows, np.arange(len(rows.users)), 4, every_position=True)
    assert users.tolist() == [10, 12]
    assert inputs.tolist() == [[PAD, 1, 2, 3], [PAD, PAD, PAD, 2]]
    assert targets.tolist() == [[PAD, 2, 3, 4], [PAD, PAD, PAD, 3]]


def test_prefix_rows_predict_only_the_last_item():
    data = sequences()
    rows = training_rows(data, every_position=False)
    inputs, targets, users = training_batch(data, rows, np.arange(len(rows.users)), 2, every_position=False)
    assert users.tolist() == [10, 10, 10, 12]
    assert inputs.tolist() == [[PAD, 1], [1, 2], [2, 3], [PAD, 2]]
    assert targets.tolist() == [2, 3, 4, 3]


def test_evaluation_histories():
    data = sequences()
    valid = evaluation_set(data, "valid", 3)
    assert valid.users.tolist() == [10, 12] and valid.targets.tolist() == [5, 4]
    assert valid.inputs.tolist() == [[2, 3, 4], [PAD, 2, 3]]
    assert valid.history_items.tolist() == [1, 2, 3, 4, 2, 3] and valid.history_lengths().tolist() == [4, 2]
    test = evaluation_set(data, "test", 3)
    assert test.targets.tolist() == [6, 8]
    assert test.inputs.tolist() == [[3, 4, 5], [2, 3, 4]]
    assert test.history_items.tolist() == [1, 2, 3, 4, 5, 2, 3, 4]


def test_trim_padding_drops_only_all_padding_columns():
    inputs = np.array([[PAD, PAD, 1, 2], [PAD, PAD, PAD, 3]])
    targets = np.array([[PAD, PAD, 2, 3], [PAD, PAD, PAD, 4]])
    trimmed_inputs, trimmed_targets = trim_padding(inputs, targets, pad=PAD)
    assert trimmed_inputs.tolist() == [[1, 2], [PAD, 3]] and trimmed_targets.tolist() == [[2, 3], [PAD, 4]]


def test_sortish_batches_cover_every_row_once_in_length_bands():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=1000)
    batches = sortish_batches(lengths, batch_size=10, window=100, rng=rng)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 3  # a whole window (all rows here) sorted: each batch holds nearly equal lengths
    plain = sortish_batches(lengths, batch_size=10, window=1, rng=rng)
    assert np.mean([np.ptp(lengths[b]) for b in plain]) > 20
