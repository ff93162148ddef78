"""FMLP-Rec (Zhou et al., WWW 2022): all-MLP blocks with learnable filters in the frequency domain.

Each block moves the sequence to the frequency domain (FFT over positions), multiplies it by a learned complex
filter per frequency and channel, returns to positions, adds it back (dropout, layer norm), then applies a
GELU feed-forward network with a residual connection and layer norm. The filters mix all positions, so a state
is not causal: each training prefix predicts only its last item.
"""

from __future__ import annotations

import torch
from torch import nn

from tslrec.config import FMLPSection
from tslrec.srs.backbones.base import Backbone
from tslrec.srs.dropout import Dropout
from tslrec.srs.items import ItemRepresentation


class _FilterBlock(nn.Module):
    def __init__(self, dim: int, max_length: int, dropout: float) -> None:
        super().__init__()
        self.filter = nn.Parameter(torch.randn(max_length // 2 + 1, dim, 2) * 0.02)
        self.filter_dropout = Dropout(dropout)
        self.filter_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Dropout(dropout)
        )
        self.feed_forward_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        spectrum = torch.fft.rfft(x, dim=1, norm="ortho") * torch.view_as_complex(self.filter)
        filtered = torch.fft.irfft(spectrum, n=length, dim=1, norm="ortho")
        x = self.filter_norm(x + self.filter_dropout(filtered))
        return self.feed_forward_norm(x + self.feed_forward(x))


class FMLPRec(Backbone):
    causal = False
    pad_invariant = False  # the filters are defined over exactly max_length positions

    def __init__(self, items: ItemRepresentation, n_users: int, max_length: int, cfg: FMLPSection) -> None:
        super().__init__(items, "prefixes")
        self.positions = nn.Embedding(max_length, items.dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.norm = nn.LayerNorm(items.dim)
        self.dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_FilterBlock(items.dim, max_length, cfg.dropout) for _ in range(cfg.blocks))

    def forward(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(inputs.shape[1], device=inputs.device)
        x = self.dropout(self.norm(self.items(inputs) + self.positions(positions)))
        for block in self.blocks:
            x = block(x)
        return x
