"""Typed run configuration.

Layers, later wins: conf/defaults.yaml < conf/datasets/<name>.yaml < --config files < key=value overrides.
conf/defaults.yaml is the single source of default values: every key must be present after merging, and
any key the dataclasses below do not declare is rejected with the list of allowed keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from tslrec.errors import ConfigError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"


def _bounded(lo: float | None = None, hi: float | None = None) -> Any:
    return field(metadata={"min": lo, "max": hi})


def _named() -> Any:
    return field(metadata={"pattern": NAME_PATTERN})


@dataclass(frozen=True)
class RunSection:
    id: str | None = _named()
    reports: str


@dataclass(frozen=True)
class LakeSection:
    root: str
    writer: Literal["auto", "delta-rs", "spark-delta"]
    rows_per_file: int = _bounded(1)
    storage_options: dict[str, str]


@dataclass(frozen=True)
class SparkSection:
    master: str | None
    profile: Literal["local", "cluster", "test"]
    conf: dict[str, str]
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"]
    progress_interval_s: float = _bounded(0.1)


@dataclass(frozen=True)
class ColumnsSection:
    user: str
    item: str
    timestamp: str


@dataclass(frozen=True)
class CsvSection:
    header: bool
    delimiter: str


@dataclass(frozen=True)
class DatasetSection:
    name: str = _named()
    format: Literal["synthetic", "user_items", "user_item", "csv", "parquet", "delta"]
    path: str | None
    id_type: Literal["int", "string"]
    columns: ColumnsSection
    timestamp_unit: Literal["s", "ms", "us"]
    timestamp_pattern: str | None
    csv: CsvSection


@dataclass(frozen=True)
class KCoreSection:
    user: int = _bounded(0)
    item: int = _bounded(0)
    max_iterations: int = _bounded(1)


@dataclass(frozen=True)
class IngestSection:
    max_bad_fraction: float = _bounded(0.0, 1.0)
    duplicates: Literal["none", "exact", "consecutive", "first"]
    kcore: KCoreSection


@dataclass(frozen=True)
class SequencesSection:
    short_users: Literal["train_only", "drop"]


@dataclass(frozen=True)
class SyntheticSection:
    users: int = _bounded(1)
    items: int = _bounded(2)
    categories: int = _bounded(1)
    mean_length: float = _bounded(3.0)
    max_length: int = _bounded(3)
    popularity_exponent: float = _bounded(0.0)
    preference_concentration: float = _bounded(1e-6)
    stay_probability: float = _bounded(0.0, 1.0)
    successor_probability: float = _bounded(0.0, 1.0)
    successors_per_item: int = _bounded(1)
    users_per_partition: int = _bounded(1)
    seed: int


BackboneName = Literal["gru4rec", "caser", "sasrec", "fmlp"]
Variant = Literal["base", "ci", "tslrec", "ensemble"]


@dataclass(frozen=True)
class BackboneSection:
    hidden: int = _bounded(1)
    dropout: float = _bounded(0.0, 1.0)
    lr: float = _bounded(0.0)
    weight_decay: float = _bounded(0.0)
    batch_size: int = _bounded(1)


Rows = Literal["sequence", "prefixes"]


@dataclass(frozen=True)
class CausalSection(BackboneSection):
    rows: Rows


@dataclass(frozen=True)
class SASRecSection(CausalSection):
    blocks: int = _bounded(1)
    heads: int = _bounded(1)


@dataclass(frozen=True)
class FMLPSection(BackboneSection):
    blocks: int = _bounded(1)


@dataclass(frozen=True)
class GRU4RecSection(CausalSection):
    layers: int = _bounded(1)


@dataclass(frozen=True)
class CaserSection(CausalSection):
    window: int = _bounded(1)
    vertical: int = _bounded(1)
    horizontal: int = _bounded(1)


@dataclass(frozen=True)
class BackbonesSection:
    sasrec: SASRecSection
    fmlp: FMLPSection
    gru4rec: GRU4RecSection
    caser: CaserSection


@dataclass(frozen=True)
class VectorsSection:
    table: str = _named()
    run: str | None
    column: str
    where: dict[str, str]


@dataclass(frozen=True)
class RepresentationSection:
    pregroups_table: str = _named()
    pregroups_run: str | None
    vectors: VectorsSection
    fusion_dropout: float = _bounded(0.0, 1.0)


@dataclass(frozen=True)
class DistributedSection:
    backend: Literal["none", "torch", "horovod"]
    processes: int = _bounded(1)
    local_mode: bool | None


@dataclass(frozen=True)
class SrsSection:
    device: Literal["auto", "cpu", "cuda"]
    threads: int = _bounded(0)
    max_length: int = _bounded(2)
    loss: Literal["ce", "bce"]
    precision: Literal["auto", "fp32", "bf16"]
    max_epochs: int = _bounded(1)
    min_epochs: int = _bounded(0)
    max_seconds: float | None
    eval_every: int = _bounded(1)
    patience: int = _bounded(1)
    loss_chunk_mb: float = _bounded(1)
    eval_batch_size: int = _bounded(1)
    batch_sort_window: int = _bounded(1)
    exclude_history: bool
    activity_groups: int = _bounded(1)
    backbones: BackbonesSection
    representation: RepresentationSection
    checkpoints: str | None
    distributed: DistributedSection


@dataclass(frozen=True)
class PretrainSection:
    backbone: BackboneName
    seed: int


@dataclass(frozen=True)
class PregroupSection:
    k: int = _bounded(1)
    init: Literal["k-means||", "random"]
    init_steps: int = _bounded(1)
    seed: int
    max_iterations: int = _bounded(1)
    relative_tolerance: float = _bounded(0.0)
    embeddings_run: str | None


@dataclass(frozen=True)
class PromptSection:
    instruction: str
    response: str


@dataclass(frozen=True)
class LoraSection:
    rank: int = _bounded(0)
    alpha: float = _bounded(0.0)
    dropout: float = _bounded(0.0, 1.0)
    targets: list[str]


@dataclass(frozen=True)
class LlmSection:
    model: str
    cache_dir: str | None
    artifacts: str
    dtype: Literal["auto", "float32", "bfloat16"]
    device: Literal["auto", "cpu", "cuda"]
    prompt: PromptSection
    max_items: int = _bounded(1)
    lora: LoraSection


@dataclass(frozen=True)
class SftSection:
    level: Literal["user", "instance"]
    epochs: float = _bounded(0.0)
    micro_batch_size: int = _bounded(1)
    gradient_accumulation: int = _bounded(1)
    lr: float = _bounded(0.0)
    warmup_ratio: float = _bounded(0.0, 1.0)
    weight_decay: float = _bounded(0.0)
    clip: float = _bounded(0.0)
    processes: int = _bounded(1)
    deepspeed_config: str
    checkpoint_every: int = _bounded(1)
    resume: bool
    holdout_fraction: float = _bounded(0.0, 0.5)
    seed: int
    restarts: int = _bounded(1)
    log_every: int = _bounded(1)
    max_steps: int | None


@dataclass(frozen=True)
class InferSection:
    model_id: str | None
    mode: Literal["full", "incremental"]
    batch_size: int = _bounded(1)
    workers: int = _bounded(1)
    threads: int = _bounded(0)
    vectors_run: str | None


@dataclass(frozen=True)
class TrainSection:
    backbones: list[BackboneName]
    variants: list[Variant]
    seeds: list[int]
    skip_finished: bool
    workers: int = _bounded(1)


@dataclass(frozen=True)
class LedgerSection:
    path: str | None
    label: str | None


@dataclass(frozen=True)
class Config:
    run: RunSection
    lake: LakeSection
    spark: SparkSection
    dataset: DatasetSection
    ingest: IngestSection
    sequences: SequencesSection
    synthetic: SyntheticSection
    srs: SrsSection
    pretrain: PretrainSection
    pregroup: PregroupSection
    llm: LlmSection
    sft: SftSection
    infer: InferSection
    train: TrainSection
    ledger: LedgerSection

    @property
    def run_id(self) -> str:
        """A run is named by the user (Airflow passes one); by default it is the dataset's name."""
        return self.run.id or self.dataset.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, leave_out: Sequence[str] = ()) -> str:
        """Identifies the settings that shape results; where things run (run, lake, spark, the checkpoint folder) is
        left out, and so is each dotted path in `leave_out` (a section, `section.key`, or deeper: e.g. the models to
        train and the other backbones' settings, when identifying one model)."""
        data = self.to_dict()
        for name in (*INFRASTRUCTURE, *leave_out):
            *parents, key = name.split(".")
            node = data
            for part in parents:
                node = node.get(part, {})
            node.pop(key, None)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


INFRASTRUCTURE = ("run", "lake", "spark", "srs.checkpoints", "ledger")
# what a sweep trains and where and how fast: not what one trained model depends on
NOT_OF_A_MODEL = ("train", "srs.device", "srs.threads", "srs.eval_batch_size", "srs.distributed")


def default_conf_dir() -> Path:
    """conf/ beside lib/ in a checkout; TSLREC_CONF_DIR points elsewhere (e.g. on a cluster node)."""
    env = os.environ.get("TSLREC_CONF_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "conf"


def available_datasets(conf_dir: Path | None = None) -> list[str]:
    folder = (conf_dir or default_conf_dir()) / "datasets"
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_config(
    dataset: str | None = None,
    overrides: Sequence[str] = (),
    files: Sequence[str | Path] = (),
    conf_dir: Path | None = None,
) -> Config:
    """The dataset layer is the one of the dataset in effect: `dataset`, else the last dataset.name the files and
    overrides set, else the defaults'. A name set there with no conf/datasets file is the user's own data: no layer
    (the embedded default's settings, such as its epoch floor, are not for it)."""
    conf_dir = conf_dir or default_conf_dir()
    if not (conf_dir / "defaults.yaml").is_file():
        raise ConfigError(f"no defaults.yaml in {conf_dir}; pass --conf-dir or set TSLREC_CONF_DIR")
    merged = _read_yaml(conf_dir / "defaults.yaml")
    layers = [*(_read_yaml(Path(extra)) for extra in files), *(parse_override(item) for item in overrides)]
    named = [layer["dataset"]["name"] for layer in layers
             if isinstance(layer.get("dataset"), dict) and "name" in layer["dataset"]]
    name = dataset or (named[-1] if named else merged.get("dataset", {}).get("name"))
    dataset_file = conf_dir / "datasets" / f"{name}.yaml"
    if dataset_file.is_file():
        merged = _merge(merged, _read_yaml(dataset_file))
    elif dataset or not named:
        raise ConfigError(
            f"unknown dataset '{name}': no {dataset_file}; known datasets: {', '.join(available_datasets(conf_dir))}"
        )
    for layer in layers:
        merged = _merge(merged, layer)
    return _build(Config, merged, "")


_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_override(item: str) -> dict[str, Any]:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}; the value is read as YAML, so 5 is an int and null is None."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    value = yaml.safe_load(raw) if raw.strip() else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _merge(base: Mapping[str, Any], top: Mapping[str, Any], cls: type | None = None) -> dict[str, Any]:
    """Sections merge key by key; any other value, a free-form mapping included, is replaced as a whole."""
    cls = cls or Config
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    out = dict(base)
    for key, value in top.items():
        section = hints.get(key)
        if dataclasses.is_dataclass(section) and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value, section)
        else:
            out[key] = value
    return out


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"'{path}' must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"'{path}'" if path else "the top level"
        raise ConfigError(
            f"unknown key '{_join(path, unknown[0])}'; allowed keys in {where}: {', '.join(fields)}"
        )
    values = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name not in data:
            raise ConfigError(f"missing key '{key}' (conf/defaults.yaml should define it)")
        values[name] = _coerce(data[name], hints[name], key, f.metadata)
    return cls(**values)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _coerce(value: Any, tp: Any, key: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, meta)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"bad value {value!r} for '{key}'; allowed values: {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"bad value {value!r} for '{key}'; expected a non-empty list, e.g. [a, b]")
        return [_coerce(v, args[0], f"{key}[{i}]", meta) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"bad value {value!r} for '{key}'; expected a mapping of names to values")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"bad value {value!r} for '{key}'; allowed values: true, false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"bad value {value!r} for '{key}'; expected an integer")
        return _check_range(value, key, meta)
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-6 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"bad value {value!r} for '{key}'; expected a number, e.g. 0.001 or 1e-3")
        return _check_range(float(value), key, meta)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"bad value {value!r} for '{key}'; expected a string")
        text = str(value)
        pattern = meta.get("pattern")
        if pattern and not re.fullmatch(pattern, text):
            raise ConfigError(
                f"bad value {text!r} for '{key}'; use letters, digits, '.', '_' and '-' only, starting with a letter or digit"
            )
        return text
    raise TypeError(f"config type {tp} of '{key}' is not supported")


def _check_range(value: float, key: str, meta: Mapping[str, Any]) -> Any:
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"bad value {value!r} for '{key}'; it must be {bounds}")
    return value
