"""GRU4Rec (Hidasi et al., ICLR 2016) as used for next-item prediction, as in the reference code behind Xu et
al.'s CE results: xavier-initialised embeddings, dropout, a bias-free GRU over the sequence, a linear map back to
the item space at every position. Sequences are packed, so the padding before a user's items never enters the
recurrence."""

from __future__ import annotations

import torch
from torch import nn

from tslrec.config import GRU4RecSection
from tslrec.srs.backbones.base import Backbone, xavier_ids
from tslrec.srs.dropout import Dropout
from tslrec.srs.items import ItemRepresentation


class GRU4Rec(Backbone):
    causal = True

    def __init__(self, items: ItemRepresentation, n_users: int, max_length: int, cfg: GRU4RecSection) -> None:
        super().__init__(items, cfg.rows)
        self.dropout = Dropout(cfg.dropout)
        self.gru = nn.GRU(items.dim, cfg.hidden, num_layers=cfg.layers, batch_first=True, bias=False)
        for weight in self.gru.parameters():
            nn.init.xavier_uniform_(weight)
        xavier_ids(items)
        self.out = nn.Linear(cfg.hidden, items.dim)

    def forward(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        b, length = inputs.shape
        lengths = (inputs != self.items.pad).sum(dim=1)
        # left-padded rows -> items first (rolled left by their padding), packed by length, rolled back after
        shift = (torch.arange(length, device=inputs.device)[None, :] + (length - lengths)[:, None]) % length
        embedded = self.dropout(self.items(inputs.gather(1, shift)))
        packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.clamp(min=1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        states, _ = self.gru(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=length)
        back = (torch.arange(length, device=inputs.device)[None, :] - (length - lengths)[:, None]) % length
        return self.out(states.gather(1, back[:, :, None].expand(-1, -1, states.shape[2])))
