"""LLM-ESR's dual-view sequence model: one backbone, its weights shared, reads a sequence twice, once through
each view of TwoViews; the two final states side by side score against the two item tables side by side, i.e. the
collaborative score plus the semantic score. The LLM branch is a second model of the user, not an input mixed
into the ID embedding, so the ID view trains as Base does and the semantic view adds what it knows."""

from __future__ import annotations

import torch
from torch import nn

from tslrec.srs.backbones.base import Backbone
from tslrec.srs.items import TwoViews


class DualView(Backbone):
    def __init__(self, inner: Backbone) -> None:
        assert isinstance(inner.items, TwoViews), "a dual view needs the two-view item representation"
        nn.Module.__init__(self)
        self.inner = inner
        self.items = inner.items
        self.every_position = inner.every_position
        self.causal = inner.causal
        self.pad_invariant = inner.pad_invariant
        self.autocast = inner.autocast

    def forward(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        collaborative = self.inner(inputs, users)
        with self.items.viewing("semantic"):
            semantic = self.inner(inputs, users)
        return torch.cat([collaborative, semantic], dim=-1)
