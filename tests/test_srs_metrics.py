"""Metric functions against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from tslrec.srs.backbones.base import Backbone
from tslrec.srs.data import EvaluationSet
from tslrec.srs.evaluate import is_activity_group, per_user, summarize
from tslrec.srs.items import ItemRepresentation
from tslrec.srs.metrics import hit_and_ndcg, rank_counts


def metrics(scores, targets, k):
    above, tied = rank_counts(torch.tensor(scores, dtype=torch.float32), torch.tensor(targets))
    hr, ndcg = hit_and_ndcg(above, tied, k)
    return hr.tolist(), ndcg.tolist()


def test_plain_ranks():
    scores = [[0.9, 0.1, 0.5, 0.3], [0.9, 0.1, 0.5, 0.3], [0.9, 0.1, 0.5, 0.3]]
    hr, ndcg = metrics(scores, [0, 2, 1], k=2)
    assert hr == [1.0, 1.0, 0.0]
    assert ndcg == pytest.approx([1.0, 1 / math.log2(3), 0.0])


def test_ties_are_random_order_not_a_free_win():
    # target tied with one other item, one item above: position 1 or 2 with equal chance
    hr, ndcg = metrics([[0.9, 0.5, 0.5, 0.1]], [1], k=2)
    assert hr == [0.5] and ndcg == pytest.approx([0.5 / math.log2(3)])
    # a constant model: the target is anywhere among the 4 items
    hr, ndcg = metrics([[1.0, 1.0, 1.0, 1.0]], [2], k=1)
    assert hr == [0.25] and ndcg == [0.25]


def test_k_larger_than_the_item_count():
    hr, ndcg = metrics([[0.1, 0.2, 0.3]], [0], k=10)
    assert hr == [1.0] and ndcg == pytest.approx([1 / math.log2(4)])
    hr, _ = metrics([[0.3, 0.3, 0.3]], [0], k=10)
    assert hr == [1.0]


class LastItem(Backbone):
    """The state after a sequence is its last item's vector: scores are plain dot products."""

    def forward(self, inputs, users):
        return self.items(inputs)


def test_history_items_rank_last_but_the_target_always_ranks():
    items = ItemRepresentation(n_items=5, dim=2)
    with torch.no_grad():
        items.ids.weight[:5] = torch.tensor([[1.0, 0.0], [0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.6, 0.0]])
    model = LastItem(items, "sequence")
    # user 0 saw items 0, 1 and wants 3; user 1 saw 0, 3 and wants 3 again (a repeat)
    data = EvaluationSet(
        inputs=np.array([[0, 1], [0, 3]]), targets=np.array([3, 3]), users=np.array([0, 1]),
        history_offsets=np.array([0, 2, 4]), history_items=np.array([0, 1, 0, 3]),
    )
    kept = per_user(model, data, exclude_history=False, batch_size=1, device=torch.device("cpu"))
    dropped = per_user(model, data, exclude_history=True, batch_size=2, device=torch.device("cpu"))
    # scores follow item order 0 > 1 > 2 > 3 > 4 for both users
    assert kept["HR@5"].tolist() == [1.0, 1.0] and kept["NDCG@5"] == pytest.approx([1 / math.log2(5)] * 2)
    # user 0: items 0 and 1 leave the ranking, so 3 is second; user 1: item 0 leaves, 3 (the target) stays
    assert dropped["NDCG@5"] == pytest.approx([1 / math.log2(3), 1 / math.log2(4)])


def test_activity_groups_split_users_evenly_by_history_length():
    values = {"HR@10": np.array([1.0, 0.0, 1.0, 1.0])}
    rows = summarize(values, np.array([9, 3, 5, 7]), np.array([0, 9, 4, 30]), groups=2)
    by_group = {(r.user_group, r.metric): (r.users, r.value) for r in rows}
    assert by_group[("all", "HR@10")] == (4, 0.75)
    assert by_group[("1/2 (length 3-5)", "HR@10")] == (2, 0.5)
    assert by_group[("2/2 (length 7-9)", "HR@10")] == (2, 1.0)


def test_target_popularity_segments_split_users_by_the_targets_training_count():
    values = {"HR@10": np.array([1.0, 0.0, 1.0, 1.0, 0.0])}
    rows = summarize(values, np.array([9, 3, 5, 7, 4]), np.array([0, 9, 4, 30, 2]), groups=2)
    by_group = {(r.user_group, r.metric): (r.users, r.value) for r in rows}
    # targets by popularity: 0 (1.0), 2 (0.0), 4 (1.0) | 9 (0.0), 30 (1.0); array_split puts the odd one first
    assert by_group[("items 1/2 (popularity 0-4)", "HR@10")] == (3, pytest.approx(2 / 3))
    assert by_group[("items 2/2 (popularity 9-30)", "HR@10")] == (2, 0.5)
    assert by_group[("items tail (popularity <= 4)", "HR@10")] == (3, pytest.approx(2 / 3))
    assert by_group[("items cold (popularity 0)", "HR@10")] == (1, 1.0)
    assert is_activity_group("1/2 (length 3-5)") and not is_activity_group("items cold (popularity 0)")


def test_segments_without_members_are_left_out():
    rows = summarize({"HR@10": np.array([1.0, 0.0])}, np.array([3, 4]), np.array([7, 8]), groups=1)
    assert {r.user_group for r in rows} == {"all"}
