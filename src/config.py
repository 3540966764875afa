"""YAML configs with one level of ``_base_`` inheritance, strict keys and ``key=value`` overrides.

A config file is a nested mapping of sections (``model``, ``loss``, ``data``, ``train``, ``eval``).
It may name one parent with ``_base_: relative/path.yaml``; the child's keys are merged over the
parent's, section by section. The parent must not itself have a ``_base_`` (one level only, like
mindyolo's ``__BASE__`` and mmdetection's ``_base_`` used flat).

Strictness: the keys of the merged config must all appear in ``configs/defaults.yaml`` (for the model family
named by ``model.name``: the shared blocks it names, then its own sections; :func:`family_defaults`), so a typo is
an error naming the key instead of a silently ignored setting. Overrides from the command line (``--set
train.lr=2e-4``) follow the same rule and are also type-checked against the default (:func:`check_override_type`)
before anything is built or written.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from src.errors import InputError
from src.fileio import atomic_write_text

DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "configs" / "defaults.yaml"


class ConfigError(InputError, ValueError):
    """Raised for an unreadable config, an unknown key or a malformed override."""


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse YAML in {path}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict, child: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_keys(cfg: dict, schema: dict, source: str, prefix: str = "") -> None:
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{source}: unknown config key '{dotted}' (known keys here: {known})")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a section (mapping), got {value!r}")
            _check_keys(value, schema[key], source, dotted + ".")


SHARED = "shared"
"""Top-level section of ``configs/defaults.yaml`` holding blocks of keys several model families share."""
SHARED_BLOCKS = "shared_blocks"
"""Key of a family in ``configs/defaults.yaml`` naming the shared blocks it takes."""


def _add_block(schema: dict, block: dict, source: str, prefix: str = "") -> None:
    for key, value in block.items():
        if isinstance(value, dict) and isinstance(schema.get(key), dict):
            _add_block(schema[key], value, source, f"{prefix}{key}.")
        elif key in schema:
            raise ConfigError(f"{DEFAULTS_FILE}: '{prefix}{key}' of {source} is already given by another block; "
                              f"write each key once")
        else:
            schema[key] = copy.deepcopy(value)


def family_defaults(name: str) -> dict:
    """Every key of model family ``name`` with its default: its shared blocks, then its own sections.

    Raises:
        ConfigError: an unknown family, an unknown block, or a key written twice (in two blocks, or in a block and
            the family).
    """
    defaults = _read_yaml(DEFAULTS_FILE)
    blocks = defaults.pop(SHARED, {})
    if name not in defaults:
        raise ConfigError(f"model.name must be one of {sorted(defaults)}, got {name!r}")
    family = dict(defaults[name])
    schema: dict = {}
    for block in family.pop(SHARED_BLOCKS, []):
        if block not in blocks:
            raise ConfigError(f"{DEFAULTS_FILE}: {name} names an unknown shared block {block!r}")
        _add_block(schema, blocks[block], f"block {block!r}")
    _add_block(schema, family, name)
    return schema


def _schema_for(cfg: dict) -> dict:
    return family_defaults(cfg.get("model", {}).get("name"))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``'train.lr=2e-4'`` into ``(['train', 'lr'], 0.0002)``; the value is parsed as YAML.

    Raises:
        ConfigError: if there is no ``=`` or the key is empty.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': cannot parse value: {err}") from err
    if isinstance(parsed, str):
        # YAML 1.1 reads '2e-4' (no dot) as a string; users mean a number.
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return parts, parsed


_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a section (mapping)"}


def check_override_type(dotted: str, value: Any, default: Any, text: str | None = None) -> Any:
    """Check an override's parsed ``value`` against the key's ``default`` in ``configs/defaults.yaml``.

    Rules: a null default accepts anything; a boolean accepts only ``true``/``false`` (not 0/1); an integer
    only integers (not ``1.5``, not booleans); a number integers or floats (returned as float); a string any
    scalar (``text``, the value as typed, is kept, so ``data.train_split=2017`` is the string ``'2017'``); a
    list a list whose items follow the default's first item by the same rules (an empty default: any list).

    Returns:
        ``value``, converted where the rules say so.

    Raises:
        ConfigError: naming the key, the value and the expected type.
    """
    if default is None:
        return value
    expected = type(default)
    if expected is str and value is not None and not isinstance(value, (list, dict)):
        return text if text is not None and not isinstance(value, str) else str(value)
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        if expected is list and default:
            return [check_override_type(f"{dotted}[{i}]", item, default[0]) for i, item in enumerate(value)]
        return value
    kind = _TYPE_NAMES.get(expected, expected.__name__)
    raise ConfigError(f"{dotted} must be {kind} (default: {json.dumps(default)}), got {value!r} "
                      f"({type(value).__name__})")


ALTERNATIVE_DEFAULTS = {"model.depth": [[1, 1, 1, 1]]}
"""Keys that take a second kind of value besides their default's: example values it is checked against too
(DeFRCN's ``model.depth`` is 50 / 101 or four block counts)."""


def _check_typed(dotted: str, value: Any, default: Any, text: str) -> Any:
    try:
        return check_override_type(dotted, value, default, text)
    except ConfigError as err:
        for example in ALTERNATIVE_DEFAULTS.get(dotted, []):
            try:
                return check_override_type(dotted, value, example, text)
            except ConfigError:
                pass
        raise err


def _default_of(schema: dict, keys: list[str]) -> Any:
    node: Any = schema
    for key in keys:
        node = node[key]
    return node


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict:
    """Load a config, resolve its ``_base_``, apply overrides and check every key.

    Args:
        path: YAML file.
        overrides: strings ``section.key=value``; values are parsed as YAML (``true``, ``1e-4``, ``[1, 2]``).

    Returns:
        The merged nested dict, complete: every key of ``configs/defaults.yaml`` for the model is present.

    Raises:
        ConfigError: missing or unparsable file, a ``_base_`` chain deeper than one level,
            an unknown key (named, with the file it came from), a malformed override, or an override whose
            value has the wrong type for its key (see :func:`check_override_type`).
    """
    path = Path(path)
    cfg = _read_yaml(path)
    base_name = cfg.pop("_base_", None)
    if base_name is not None:
        base_path = (path.parent / base_name).resolve()
        base = _read_yaml(base_path)
        if "_base_" in base:
            raise ConfigError(f"{base_path}: a _base_ config cannot have its own _base_ (one level only)")
        _check_keys(base, _schema_for(_merge(base, cfg)), str(base_path))
        cfg = _merge(base, cfg)
    schema = _schema_for(cfg)
    _check_keys(cfg, schema, str(path))
    cfg = _merge(schema, cfg)
    for text in overrides:
        keys, value = parse_override(text)
        _check_keys(_nest(keys, value), schema, f"override '{text}'")
        default = _default_of(schema, keys)
        if not isinstance(default, dict):
            raw = text.split("=", 1)[1].strip()
            try:
                value = _check_typed(".".join(keys), value, default, raw)
            except ConfigError as err:
                raise ConfigError(f"--set {text}: {err}") from err
        cfg = _merge(cfg, _nest(keys, value))
    return cfg


def _nest(keys: list[str], value: Any) -> dict:
    nested: Any = value
    for key in reversed(keys):
        nested = {key: nested}
    return nested


def save_config(cfg: dict, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML atomically (temporary file, then rename)."""
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
