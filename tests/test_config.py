"""src/config.py: inheritance, strict keys, overrides, and the shipped configs."""

from pathlib import Path

import pytest
import yaml

from src import config as config_module
from src.config import ConfigError, family_defaults, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIGS / "detr").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / "detr" / name)
    assert cfg["model"]["name"] == "detr"
    assert set(cfg) == {"model", "loss", "data", "train", "eval"}


def test_base_is_merged_and_child_wins():
    cfg = load_config(CONFIGS / "detr" / "detr_r101_dc5.yaml")
    assert cfg["model"]["backbone"] == "resnet101"
    assert cfg["model"]["dilation"] is True
    assert cfg["train"]["batch_size"] == 1
    assert cfg["train"]["lr"] == pytest.approx(1e-4)


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path / "bad.yaml", {"model": {"name": "detr", "hiden_dim": 64}})
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'model\.hiden_dim'"):
        load_config(path)


def test_unknown_key_in_base_is_named(tmp_path):
    _write(tmp_path / "base.yaml", {"model": {"name": "detr"}, "train": {"learning_rate": 1}})
    child = _write(tmp_path / "child.yaml", {"_base_": "base.yaml"})
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown config key 'train\.learning_rate'"):
        load_config(child)


def test_overrides_parse_yaml_values_and_reject_unknown_keys():
    cfg = load_config(CONFIGS / "detr" / "detr_r50.yaml",
                      ["train.lr=2e-4", "model.aux_loss=false", "data.train_scales=[512, 544]"])
    assert cfg["train"]["lr"] == pytest.approx(2e-4)
    assert cfg["model"]["aux_loss"] is False
    assert cfg["data"]["train_scales"] == [512, 544]
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(CONFIGS / "detr" / "detr_r50.yaml", ["train.lrr=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(CONFIGS / "detr" / "detr_r50.yaml", ["train.lr"])


def test_unknown_model_name(tmp_path):
    with pytest.raises(ConfigError, match="model.name"):
        load_config(_write(tmp_path / "m.yaml", {"model": {"name": "yolo"}}))


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


def test_save_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "detr" / "detr_tiny.yaml")
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(tmp_path / "out" / "config.yaml") == cfg
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_defaults_write_each_key_once(tmp_path, monkeypatch):
    for name in ("detr", "focus_detr", "defrcn"):
        assert family_defaults(name)["model"]["name"] == name
    detr, focus = family_defaults("detr"), family_defaults("focus_detr")
    assert detr["data"] == focus["data"] and detr["data"]["resize_rounding"] == "detr"
    assert family_defaults("defrcn")["data"]["max_boxes"] == detr["data"]["max_boxes"] == 100
    twice = tmp_path / "defaults.yaml"
    twice.write_text("shared:\n  all:\n    train: {seed: 1}\nx:\n  shared_blocks: [all]\n  model: {name: x}\n"
                     "  train: {seed: 2}\n")
    monkeypatch.setattr(config_module, "DEFAULTS_FILE", twice)
    with pytest.raises(ConfigError, match=r"'train\.seed' of x is already given by another block"):
        family_defaults("x")
