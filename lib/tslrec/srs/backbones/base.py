"""The interface every backbone has: item ids in, one user state per position out, scored against all items."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from tslrec.config import Rows
from tslrec.srs.items import ItemRepresentation


class Backbone(nn.Module):
    # True: the state at a position sees only items up to it, so every position of a sequence can train at once.
    # False: states see the whole input (FMLP-Rec's filters), so each prefix must be its own example.
    causal: ClassVar[bool] = True
    # True: a state does not depend on how much padding precedes the items, so batches may drop padding columns.
    pad_invariant: ClassVar[bool] = True
    # True: in training, the forward pass runs under bfloat16 autocast when srs.precision picks bfloat16 (weights
    # stay float32). Only where it was measured to pay: with hidden 64, most backbones' matmuls are too small to
    # gain more than their casts cost.
    autocast: ClassVar[bool] = False

    def __init__(self, items: ItemRepresentation, rows: Rows) -> None:
        """rows: sequence = one training row per user, every position a target (causal backbones only);
        prefixes = one row per prefix, its next item the only target (more, smaller steps per epoch)."""
        super().__init__()
        self.items = items
        self.every_position = rows == "sequence"

    def forward(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """inputs (B, L) item ids left-padded with items.pad, users (B,) -> states (B, L, d). A backbone that is
        not causal is only asked for its last state and may return (B, 1, d)."""
        raise NotImplementedError

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., n_items): dot products with every item's representation."""
        return states @ self.items.table().T


def xavier_ids(items: ItemRepresentation) -> None:
    """The ID table xavier-normal initialised (std sqrt(2 / (items + d))), as SASRec's and GRU4Rec's reference code
    do; the padding row stays zero."""
    with torch.no_grad():
        nn.init.xavier_normal_(items.ids.weight)
        items.ids.weight[items.pad].zero_()
