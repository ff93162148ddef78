"""A trained TSLRec LLM on disk: small, and safe to load.

<folder>/adapter/            the LoRA adapter (peft, safetensors); none for a model trained with a frozen LLM (rank 0)
<folder>/heads.safetensors   projector (linear_proj) and group head
<folder>/tslrec_model.json   what it was trained on: base model, K, item vectors (table, run, backbone, width),
                             prompt, max items, LoRA settings, run, config hash, training figures

The base model is not copied: llm.model names it (the bundled SmolLM2 resolves on any machine). Loading reads JSON
and safetensors only, never a pickle. A folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from tslrec.config import LlmSection, PromptSection
from tslrec.errors import TslrecError
from tslrec.llm.loading import load_model, load_tokenizer
from tslrec.llm.module import TSLRecLLM, prompt_tokens

DESCRIPTION = "tslrec_model.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # what PEFT's save_pretrained writes (safe_serialization)


@dataclasses.dataclass(frozen=True)
class ModelCard:
    model_id: str
    base_model: str
    k: int
    item_dim: int
    vectors_table: str
    vectors_run: str
    vectors_backbone: str
    prompt: dict[str, str]
    max_items: int
    lora: dict[str, Any]
    level: str
    run_id: str
    dataset: str
    config_hash: str
    figures: dict[str, float]


def save_artifact(module: TSLRecLLM, card: ModelCard, folder: Path) -> Path:
    """Call with the trainable parameters gathered (under ZeRO-3) on the process that writes."""
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if isinstance(module.llm, PeftModel):
        module.llm.save_pretrained(staging / "adapter", safe_serialization=True)
    heads = {f"project.{n}": p.detach().float().cpu().contiguous() for n, p in module.project.named_parameters()}
    heads |= {f"head.{n}": p.detach().float().cpu().contiguous() for n, p in module.head.named_parameters()}
    save_file(heads, str(staging / "heads.safetensors"))
    return _publish(staging, card, folder)


def copy_artifact(source: Path, card: ModelCard, folder: Path) -> Path:
    """The model at `source` as another model (`card` names it), e.g. the best of several SFT restarts."""
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    return _publish(staging, card, folder)


def _publish(staging: Path, card: ModelCard, folder: Path) -> Path:
    """The description last, then the rename: a folder under its own name is always complete."""
    (staging / DESCRIPTION).write_text(json.dumps(dataclasses.asdict(card), indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def read_card(folder: Path) -> ModelCard:
    path = Path(folder) / DESCRIPTION
    if not path.is_file():
        raise TslrecError(f"{folder} is not a TSLRec model folder: {DESCRIPTION} is missing")
    return ModelCard(**json.loads(path.read_text()))


def check_compatible(card: ModelCard, k: int | None, item_dim: int | None, folder: Path) -> None:
    if k is not None and card.k != k:
        raise TslrecError(
            f"model {card.model_id} ({folder}) predicts {card.k} groups but the pre-grouping has K={k}: "
            "use the model trained on this pre-grouping, or retrain with sft"
        )
    if item_dim is not None and card.item_dim != item_dim:
        raise TslrecError(
            f"model {card.model_id} ({folder}) takes item vectors of {card.item_dim} numbers but "
            f"{card.vectors_table} has {item_dim}: use item vectors of the run it was trained on, or retrain with sft"
        )


def load_artifact(
    folder: Path, settings: LlmSection, dtype: torch.dtype, k: int | None = None, item_dim: int | None = None
) -> tuple[TSLRecLLM, ModelCard]:
    """A plain (non-DeepSpeed) module with the trained adapter, projector and head, in eval mode."""
    folder = Path(folder)
    card = read_card(folder)
    check_compatible(card, k, item_dim, folder)
    base_settings = dataclasses.replace(settings, model=card.base_model)
    llm = load_model(base_settings, dtype)
    if card.lora["rank"]:
        adapter = folder / "adapter" / ADAPTER_WEIGHTS
        if not adapter.is_file():
            raise TslrecError(f"{adapter} is missing: a model's adapter is read from safetensors only (PEFT would "
                              "fall back to an adapter_model.bin, which is never read here); train the model again "
                              "with sft")
        llm = PeftModel.from_pretrained(llm, str(folder / "adapter"))
    tokens = prompt_tokens(load_tokenizer(base_settings), PromptSection(**card.prompt), card.k)
    module = TSLRecLLM(llm, tokens, card.item_dim, card.k)
    heads = load_file(str(folder / "heads.safetensors"))
    module.project.load_state_dict({n.split(".", 1)[1]: t for n, t in heads.items() if n.startswith("project.")})
    module.head.load_state_dict({n.split(".", 1)[1]: t for n, t in heads.items() if n.startswith("head.")})
    return module.to(dtype).eval(), card
