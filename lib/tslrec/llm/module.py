"""The TSLRec LLM module (METHOD.md, Eq. 1-3).

A prompt is d_inst (text, with K filled in), then the user's items as vectors: each stage-0 item embedding mapped
by `project` (linear_proj) into the LLM's input embedding space, placed where tokens would be, then d_res (text).
h = the transformer's last hidden state at the final position; the group head gives softmax(W h + b), K values.
Rows of a batch hold different numbers of items: they are left-padded (masked, positions counted from the first
real token), so the final position is always the response's last token.
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
        """items (B, n, item_dim) left-padded, item_mask (B, n) -> (h (B, hidden), distribution (B, K))."""
        embed = self.llm.get_input_embeddings()
        instruction = embed(self.instruction)
        response = embed(self.response)
        projected = self.project(items.to(self.project.weight.dtype))
        inputs, mask = assemble(instruction, projected, item_mask, response)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        states = self.transformer()(inputs_embeds=inputs, attention_mask=mask, position_ids=positions).last_hidden_state
        h = states[:, -1]
        return h, F.softmax(self.head(h).float(), dim=-1)


    def single_items(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward() for prompts of one item each (vectors (B, item_dim)), as stage 2 runs them: every prompt starts
        with the same instruction, so its keys and values are computed once per batch and shared by the rows."""
        embed = self.llm.get_input_embeddings()
        transformer = self.transformer()
        b, n_inst = vectors.shape[0], self.instruction.shape[0]
        prefix = transformer(inputs_embeds=embed(self.instruction)[None], use_cache=True).past_key_values
        prefix.batch_repeat_interleave(b)
        item = self.project(vectors.to(self.project.weight.dtype))[:, None]
        suffix = torch.cat([item, embed(self.response)[None].expand(b, -1, -1)], dim=1)
        positions = torch.arange(n_inst, n_inst + suffix.shape[1], device=vectors.device)[None].expand(b, -1)
        mask = torch.ones(b, n_inst + suffix.shape[1], dtype=torch.long, device=vectors.device)
        states = transformer(inputs_embeds=suffix, past_key_values=prefix, attention_mask=mask,
                             position_ids=positions).last_hidden_state
        h = states[:, -1]
        return h, F.softmax(self.head(h).float(), dim=-1)


def assemble(
    instruction: torch.Tensor, items: torch.Tensor, item_mask: torch.Tensor, response: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of [padding, instruction, the row's real items, response], right-aligned, and their attention mask.

    `items` is left-padded (a row's real items are its last ones), so the instruction goes right before them.
    """
    b, n, hidden = items.shape
    n_inst, n_resp = instruction.shape[0], response.shape[0]
    counts = item_mask.sum(dim=1)
    length = n_inst + n + n_resp
    rows = torch.arange(b, device=items.device)[:, None]
    inputs = torch.zeros(b, length, hidden, dtype=items.dtype, device=items.device)
    inputs[:, n_inst:n_inst + n] = items * item_mask[..., None].to(items.dtype)
    start = n - counts  # where the row's instruction begins
    inputs[rows, start[:, None] + torch.arange(n_inst, device=items.device)] = instruction.to(items.dtype)
    inputs[:, n_inst + n:] = response.to(items.dtype)
    mask = (torch.arange(length, device=items.device)[None, :] >= start[:, None]).long()
    return inputs, mask


def reconstruction_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 3: squared error summed over the K groups, averaged over users."""
    return ((predicted - target.to(predicted.dtype)) ** 2).sum(dim=1).mean()
