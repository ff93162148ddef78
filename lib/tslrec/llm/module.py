"""The TSLRec LLM module (METHOD.md, Eq. 1-3).

A prompt is d_inst (text, with K filled in), then the user's items as vectors: each stage-0 item embedding mapped
by `project` (linear_proj) into the LLM's input embedding space, placed where tokens would be, then d_res (text).
h = the transformer's last hidden state at the final position; the group head gives softmax(W h + b), K values.
Rows of a batch hold different numbers of items: their items are left-padded (masked, skipped by the positions), so
the final position is always the response's last token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tslrec.config import PromptSection


@dataclass(frozen=True)
class PromptTokens:
    instruction: list[int]
    response: list[int]


def prompt_tokens(tokenizer: PreTrainedTokenizerBase, prompt: PromptSection, k: int) -> PromptTokens:
    return PromptTokens(
        instruction=tokenizer(prompt.instruction.format(k=k), add_special_tokens=True).input_ids,
        response=tokenizer(prompt.response, add_special_tokens=False).input_ids,
    )


class TSLRecLLM(nn.Module):
    def __init__(self, llm: PreTrainedModel, tokens: PromptTokens, item_dim: int, k: int) -> None:
        super().__init__()
        hidden = llm.config.hidden_size
        self.llm = llm
        self.k = k
        self.item_dim = item_dim
        self.register_buffer("instruction", torch.tensor(tokens.instruction, dtype=torch.long), persistent=False)
        self.register_buffer("response", torch.tensor(tokens.response, dtype=torch.long), persistent=False)
        self.project = nn.Linear(item_dim, hidden)
        self.head = nn.Linear(hidden, k)

    def transformer(self) -> nn.Module:
        """The LLM without its language-model head: only the final hidden state is needed, never the vocabulary."""
        model = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        return model.base_model

    def forward(self, items: torch.Tensor, item_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """items (B, n, item_dim) left-padded, item_mask (B, n) -> (h (B, hidden), distribution (B, K)); h is the
        last hidden state of the final position.

        Every prompt starts with the same instruction: its keys and values are computed once per batch and shared
        by the rows, which then run only their items and the response (the instruction is most of a prompt's
        tokens, so this is most of the cost). A row's padding sits between the instruction and its items, masked,
        and positions skip it, so the result is that of the row's prompt alone.
        """
        embed = self.llm.get_input_embeddings()
        transformer = self.transformer()
        b, n_inst = items.shape[0], self.instruction.shape[0]
        prefix = transformer(inputs_embeds=embed(self.instruction)[None], use_cache=True).past_key_values
        prefix.batch_repeat_interleave(b)
        projected = self.project(items.to(self.project.weight.dtype))
        suffix = torch.cat([projected, embed(self.response)[None].expand(b, -1, -1)], dim=1)
        suffix_mask = torch.cat([item_mask, torch.ones(b, self.response.shape[0], dtype=torch.bool,
                                                       device=items.device)], dim=1).long()
        positions = n_inst + (suffix_mask.cumsum(dim=1) - 1).clamp(min=0)
        mask = torch.cat([torch.ones(b, n_inst, dtype=torch.long, device=items.device), suffix_mask], dim=1)
        out = transformer(inputs_embeds=suffix, past_key_values=prefix, attention_mask=mask, position_ids=positions)
        h = out.last_hidden_state[:, -1]
        return h, F.softmax(self.head(h).float(), dim=-1)


def reconstruction_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 3: squared error summed over the K groups, averaged over users."""
    return ((predicted - target.to(predicted.dtype)) ** 2).sum(dim=1).mean()

