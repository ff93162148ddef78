import os
import subprocess
import sys

import pytest

from tslrec.config import load_config, parse_override
from tslrec.errors import ConfigError


def test_defaults_load_and_run_id_defaults_to_the_dataset():
    config = load_config()
    assert config.dataset.name == "synthetic"
    assert config.run_id == "synthetic"
    assert load_config(overrides=["run.id=beauty-2026-11-22"]).run_id == "beauty-2026-11-22"


def test_dataset_file_layers_over_the_defaults():
    config = load_config("beauty")
    assert (config.dataset.name, config.dataset.format) == ("beauty", "user_items")
    assert config.ingest.duplicates == "exact"


def test_overrides_are_typed_from_yaml():
    config = load_config(overrides=["ingest.kcore.user=5", "ingest.max_bad_fraction=0.5", "spark.conf={a: 1}"])
    assert config.ingest.kcore.user == 5
    assert config.ingest.max_bad_fraction == 0.5
    assert config.spark.conf == {"a": "1"}
    assert parse_override("a.b=null") == {"a": {"b": None}}


def test_numbers_in_exponent_form_are_numbers_in_overrides_and_files(tmp_path):
    """YAML 1.1 reads 1e-6 (no dot) as a string; a weight decay written so must not be refused."""
    config = load_config(overrides=["srs.backbones.sasrec.weight_decay=1e-6", "sft.lr=2E-3"])
    assert config.srs.backbones.sasrec.weight_decay == 1e-6
    assert config.sft.lr == 0.002
    path = tmp_path / "run.yaml"
    path.write_text("ingest:\n  max_bad_fraction: 5e-1\n")
    assert load_config(files=[path]).ingest.max_bad_fraction == 0.5
    with pytest.raises(ConfigError, match="'sft.lr'; expected a number"):
        load_config(overrides=["sft.lr=1e-6x"])


def test_unknown_key_is_named_with_the_allowed_keys():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["ingest.kcor.user=5"])
    message = str(info.value)
    assert "'ingest.kcor'" in message and "max_bad_fraction, duplicates, kcore" in message


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="unknown key 'ingets'"):
        load_config(overrides=["ingets.kcore=1"])


def test_bad_choice_lists_the_allowed_values():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["ingest.duplicates=some"])
    assert "'ingest.duplicates'" in str(info.value)
    assert "none, exact, consecutive, first" in str(info.value)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("ingest.kcore.user=two", "'ingest.kcore.user'; expected an integer"),
        ("ingest.kcore.user=-1", "'ingest.kcore.user'; it must be at least 0"),
        ("ingest.max_bad_fraction=1.5", "it must be between 0.0 and 1.0"),
        ("csv=1", "unknown key 'csv'"),
        ("dataset.csv.header=yes please", "'dataset.csv.header'; allowed values: true, false"),
        ("run.id=a/b", "'run.id'; use letters, digits"),
        ("dataset.columns=3", "'dataset.columns' must be a mapping"),
        ("ingest.kcore", "not of the form section.key=value"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert fragment in str(info.value)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown dataset 'beuty'.*beauty.*ml-1m"):
        load_config("beuty")


def test_the_dataset_layer_is_the_one_of_the_dataset_in_effect(tmp_path):
    defaults = load_config(overrides=["dataset.name=mylog"])  # the user's own data: conf/defaults.yaml only
    synthetic = load_config()
    assert synthetic.srs.min_epochs == 100 and synthetic.pregroup.k == 12  # conf/datasets/synthetic.yaml
    assert (defaults.dataset.name, defaults.srs.min_epochs, defaults.pregroup.k) == ("mylog", 0, 32)
    named = load_config(overrides=["dataset.name=ml-1m"])
    assert named.srs.max_length == load_config("ml-1m").srs.max_length == 200
    mine = tmp_path / "mine.yaml"
    mine.write_text("dataset:\n  name: beauty\n")
    assert load_config(files=[mine]).dataset.path == load_config("beauty").dataset.path


def test_config_file_layer(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("ingest:\n  kcore:\n    item: 3\n")
    assert load_config(files=[extra]).ingest.kcore.item == 3
    extra.write_text("ingest: [1, 2]\n")
    with pytest.raises(ConfigError, match="'ingest' must be a mapping"):
        load_config(files=[extra])


def test_hash_follows_settings_not_infrastructure():
    base = load_config()
    assert base.hash() == load_config().hash()
    assert base.hash() != load_config(overrides=["ingest.kcore.user=2"]).hash()
    assert base.hash() == load_config(overrides=["lake.root=/elsewhere", "spark.master=local[1]", "run.id=x"]).hash()
    logged = load_config(overrides=["sft.log_every=3"])
    assert logged.hash() != base.hash() and logged.hash(["sft.log_every"]) == base.hash(["sft.log_every"])
    assert load_config(overrides=["sft.lr=0.1"]).hash(["sft.log_every"]) != base.hash(["sft.log_every"])
    fused = load_config(overrides=["srs.representation.fusion_dropout=0.3"])  # deeper paths leave out one key
    assert fused.hash(["srs.representation.fusion_dropout"]) == base.hash(["srs.representation.fusion_dropout"]) != fused.hash()


def test_sections_merge_but_mappings_are_replaced():
    config = load_config(overrides=["srs.representation.vectors.where={model: m1}", "srs.backbones.sasrec.lr=0.1"])
    assert config.srs.representation.vectors.where == {"model": "m1"}
    assert config.srs.backbones.sasrec.lr == 0.1 and config.srs.backbones.sasrec.blocks == 2


def test_importing_tslrec_caps_onednns_primitive_cache_unless_the_user_set_it():
    """Uncapped, oneDNN's cache of one primitive per matmul shape grew a CPU training by gigabytes."""
    probe = "import os, tslrec; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    ours = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    theirs = subprocess.run([sys.executable, "-c", probe], env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "99"},
                            capture_output=True, text=True, check=True)
    assert (ours.stdout.strip(), theirs.stdout.strip()) == ("64", "99")
