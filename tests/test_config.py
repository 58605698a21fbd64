"""Config loading: strict keys and types, one-line errors naming file and key, typed overrides."""

from __future__ import annotations

import pytest

from cxr_helpers.config import ConfigError, config_from_dict, load_config, parse_override, save_config
from cxr_helpers.paths import project_root

CONFIGS = sorted((project_root() / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.name
    assert cfg.data.source in {"synthetic", "medmnist", "nih_cxr14", "folder", "csv", "hf", "pooled"}
    assert (cfg.data.source == "pooled") == bool(cfg.data.sources)


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    p = _write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert str(p) in msg and "'train.epoch'" in msg and "epochs" in msg and "\n" not in msg


def test_mistyped_value_names_expected_type(tmp_path):
    p = _write(tmp_path, "train:\n  epochs: three\n")
    with pytest.raises(ConfigError, match=r"key 'train.epochs' expects int, got str 'three'"):
        load_config(p)
    p = _write(tmp_path, "train:\n  pos_weight: 1\n")
    with pytest.raises(ConfigError, match="expects bool"):
        load_config(p)
    p = _write(tmp_path, "data: 5\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)


def test_overrides_are_type_checked(tmp_path):
    p = _write(tmp_path, "name: x\n")
    cfg = load_config(p, ["train.epochs=3", "model.arch=densenet121", "train.lr=1e-2", "train.grad_clip=1"])
    assert (cfg.train.epochs, cfg.model.arch, cfg.train.lr, cfg.train.grad_clip) == (3, "densenet121", 0.01, 1.0)
    assert isinstance(cfg.train.grad_clip, float)
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        load_config(p, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="expects int"):
        load_config(p, ["train.epochs=3.5"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(p, ["train.epochs"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(p, ["seed.x=1"])


def test_mapping_overrides_merge_with_defaults(tmp_path):
    p = _write(tmp_path, "name: x\n")
    cfg = load_config(p, ["data.synthetic.prevalence.Nodule=0.3", "eval.targets.macro_auroc=0.86"])
    assert cfg.data.synthetic.prevalence["Nodule"] == 0.3
    assert "Cardiomegaly" in cfg.data.synthetic.prevalence
    assert cfg.eval.targets == {"macro_auroc": 0.86}


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    p = _write(tmp_path, "train: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_roundtrip_resolved_config(tmp_path):
    cfg = load_config(project_root() / "configs" / "demo.yaml", ["train.epochs=2"])
    out = tmp_path / "config.yaml"
    save_config(cfg, out)
    again = load_config(out)
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_parse_override_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=resnet18") == ("a", "resnet18")


def test_on_off_strings_survive_yaml(tmp_path):
    """YAML reads on/off as booleans; string keys documented as on|off must still accept them."""
    p = _write(tmp_path, "train:\n  channels_last: on\n  amp: off\n")
    cfg = load_config(p, ["train.compile=true"])
    assert (cfg.train.channels_last, cfg.train.amp, cfg.train.compile) == ("on", "off", True)
    assert load_config(p, ["train.channels_last=off"]).train.channels_last == "off"


def test_enumerated_values_fail_at_load_time(tmp_path):
    p = _write(tmp_path, "data:\n  source: nope\n")
    with pytest.raises(ConfigError, match=r"key 'data.source' is 'nope'; allowed: synthetic, nih_cxr14"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"key 'train.amp' is 'maybe'; allowed: auto, bf16, fp16, off"):
        load_config(_write(tmp_path, "name: x\n"), ["train.amp=maybe"])


def test_choices_match_the_modules_that_consume_them():
    from cxr_helpers.config import CHOICES
    from cxr_helpers.data.geometry import ASPECTS
    from cxr_helpers.data.sources import ADAPTERS
    from cxr_helpers.evaluate.thresholds import POLICIES
    from cxr_helpers.train.losses import LOSSES

    assert set(CHOICES["data.source"]) == set(ADAPTERS)
    assert set(CHOICES["data.aspect"]) == set(ASPECTS)
    assert set(CHOICES["train.loss"]) == set(LOSSES)
    assert set(CHOICES["eval.threshold_policy"]) == set(POLICIES)


def test_list_choices_match_imageio():
    from cxr_helpers.config import LIST_CHOICES, DataConfig
    from cxr_helpers.data.imageio import IMAGE_CHECKS

    assert LIST_CHOICES["data.image_checks"] == IMAGE_CHECKS == tuple(DataConfig().image_checks)


def _error(tmp_path, text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), overrides)
    msg = str(info.value)
    assert "\n" not in msg and "c.yaml" in msg
    return msg


def test_double_quoted_regex_says_use_single_quotes(tmp_path):
    msg = _error(tmp_path, 'data:\n  patient_id_pattern: "(\\d+)_"\n')
    assert "line 2" in msg and "unknown escape character 'd'" in msg and "single quotes" in msg
    cfg = load_config(_write(tmp_path, "data:\n  patient_id_pattern: '(\\d+)_'\n"))
    assert cfg.data.patient_id_pattern == r"(\d+)_"


def test_label_map_keys_become_csv_text_and_values_0_1(tmp_path):
    text = 'data:\n  csv:\n    label_map: {-1: positive, "": 0, "yes": true, "2": 1.0, ~: negative}\n'
    cfg = load_config(_write(tmp_path, text))
    assert cfg.data.csv.label_map == {"-1": 1, "": 0, "yes": 1, "2": 1}
    cfg = load_config(_write(tmp_path, "name: x\n"), ["data.csv.label_map.-1=0"])
    assert cfg.data.csv.label_map == {"-1": 0}
    saved = tmp_path / "saved.yaml"
    save_config(cfg, saved)
    assert load_config(saved).data.csv.label_map == {"-1": 0}


def test_label_map_errors_are_one_line(tmp_path):
    assert "quote it" in _error(tmp_path, "data:\n  csv:\n    label_map: {yes: 1}\n")
    cfg = load_config(_write(tmp_path, "data:\n  csv:\n    label_map: {'-1': masked, '': uncertain}\n"))
    assert cfg.data.csv.label_map == {"-1": "masked", "": "uncertain"}
    msg = _error(tmp_path, "data:\n  csv:\n    label_map: {'-1': maybe}\n")
    assert "must be 0 or 1" in msg and "masked" in msg and "data.uncertain" in msg
    assert "must be 0 or 1" in _error(tmp_path, "data:\n  csv:\n    label_map: {'-1': 2}\n")
    assert "expects a mapping" in _error(tmp_path, "data:\n  csv:\n    label_map: [1]\n")


def test_image_checks_items_are_checked(tmp_path):
    msg = _error(tmp_path, "data:\n  image_checks: [lateral, frontal]\n")
    assert "'data.image_checks'" in msg and "'frontal'" in msg and "modality, body_part, lateral" in msg
    assert "'oblique'" in _error(tmp_path, "name: x\n", ("data.image_checks=[oblique]",))
