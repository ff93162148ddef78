"""The score-ensemble control (variant `ensemble`): two Base models of different seeds, their scores summed.

A fusion that adds a second set of item vectors also adds a second view of the data; averaging two independently
trained models does the same without any LLM (EnsRec). A TSLRec gain counts only where it beats this control.
Member 1 is the Base model of the same seed (same draws, same result); member 2 has the seed + MEMBER_SEED_STEP.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tslrec.context import RunContext
from tslrec.srs.backbones.base import Backbone
from tslrec.srs.data import Sequences
from tslrec.srs.team import Team
from tslrec.srs.train import Trained, train_model

MEMBER_SEED_STEP = 1000


class _JoinedTables(nn.Module):
    """The members' item tables side by side: a state joined the same way scores as the sum of their scores."""

    def __init__(self, members: nn.ModuleList) -> None:
        super().__init__()
        self.members = members

    @property
    def pad(self) -> int:
        return self.members[0].items.pad

    def table(self) -> torch.Tensor:
        return torch.cat([member.items.table() for member in self.members], dim=-1)


class ScoreEnsemble(Backbone):
    """Evaluation only: [h1, h2] . [T1, T2] = h1 . T1 + h2 . T2, so full ranking needs no code of its own."""

    def __init__(self, members: list[Backbone]) -> None:
        nn.Module.__init__(self)
        self.members = nn.ModuleList(members)
        self.items = _JoinedTables(self.members)
        self.every_position = members[0].every_position
        self.pad_invariant = all(member.pad_invariant for member in members)

    def forward(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(inputs, users)[:, -1:] for member in self.members], dim=-1)


def member_seeds(seed: int) -> tuple[int, int]:
    return seed, seed + MEMBER_SEED_STEP


def train_ensemble(
    ctx: RunContext, data: Sequences, backbone: str, seed: int, team: Team, checkpoint: Callable[[int], Path | None]
) -> Trained:
    """Both members trained as Base models (checkpoint(member) their resumable files), one after the other."""
    members = [train_model(ctx, data, backbone, "base", member_seed, team=team, checkpoint=checkpoint(number))
               for number, member_seed in enumerate(member_seeds(seed), start=1)]
    epochs = sum(member.epochs for member in members)
    seconds = sum(member.seconds_per_epoch * member.epochs for member in members)
    return Trained(ScoreEnsemble([member.model for member in members]).eval(), epochs,
                   max(member.best_epoch for member in members), seconds / max(epochs, 1), {},
                   "+".join(sorted({member.stopped_by for member in members})), members[0].precision)
