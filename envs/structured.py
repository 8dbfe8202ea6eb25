"""Structured configs (OmegaConf dataclasses) to and from plain data and YAML: the helpers every layer shares (the
command line's own parsing is cli.parse). No heavy imports."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def typed(schema: type, data: Any) -> Any:
    """`data` (a dict, a DictConfig, or already a `schema` instance) as a `schema` instance, every key and type
    checked against it: a key it does not have or a value of the wrong type is a one-line ValueError."""
    if isinstance(data, schema):
        return data
    structured = OmegaConf.structured(schema)
    OmegaConf.set_struct(structured, True)
    try:
        return OmegaConf.to_object(OmegaConf.merge(structured, data))
    except OmegaConfBaseException as err:
        raise ValueError(f"{getattr(err, 'full_key', None) or schema.__name__}: {str(err).splitlines()[0]}") from None


def narrow(cfg: Any, schema: type) -> Any:
    """The `schema` part of a config that has all of its fields (e.g. TrainConfig's UpdateSettings)."""
    return schema(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(schema)})


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def load_yaml(path: str | Path, what: str) -> DictConfig:
    """A saved config file; a missing or unreadable one is a one-line error naming `what`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no config file at {path}")
    try:
        data = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable YAML is the same one-line error
        raise ValueError(f"{what}: {path} is unreadable ({(str(err).strip().splitlines() or ['?'])[0]})") from None
    if not isinstance(data, DictConfig):
        raise ValueError(f"{what}: {path} is not a config (a YAML mapping of keys to values)")
    if not data:
        raise ValueError(f"{what}: {path} is empty (a config file holds a YAML mapping of keys to values)")
    return data
