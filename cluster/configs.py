"""Command-line configs: OmegaConf structured dataclasses with `key=value` dotlist overrides.

Rules shared by every command:
- unknown keys and values of the wrong type are errors (struct mode);
- `sampler=NAME` / `task=NAME` are shorthands for `sampler.name=NAME` / `task.name=NAME`;
- a `sampler.<param>` that the chosen sampler does not read is an error, so a typo cannot be ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from envs.samplers import SAMPLERS

NAMED_NODES = ("sampler", "task")


class ConfigError(ValueError):
    """A bad command line; the message is one line."""


def parse(schema: type, args: list[str], command: str) -> Any:
    """The dataclass instance for `schema` with `args` (key=value) applied."""
    dotlist = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got {arg!r} (see: unmask {command} --help)")
        key, value = arg.split("=", 1)
        if key in NAMED_NODES and dataclasses.is_dataclass(_field_type(schema, key)):
            key = f"{key}.name"
        dotlist.append(f"{key}={value}")
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    for key in base.keys():  # plain dict fields (a sweep's grid) take new keys; dataclass nodes do not
        node = base._get_node(key)
        if isinstance(node, DictConfig) and node._metadata.object_type in (None, dict):
            OmegaConf.set_struct(node, False)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        if "not in struct" in msg or "Key" in msg and "not" in msg:
            raise ConfigError(f"unknown key {key!r} for 'unmask {command}' (see: unmask {command} --help)") from None
        raise ConfigError(f"bad value for {key!r}: {msg}") from None
    _check_sampler_params(cfg, [d.split("=", 1)[0] for d in dotlist])
    return cfg


def _field_type(schema: type, name: str):
    for f in dataclasses.fields(schema):
        if f.name == name:
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return None


def _check_sampler_params(cfg: Any, keys: list[str]) -> None:
    sampler = getattr(cfg, "sampler", None)
    if sampler is None or not hasattr(sampler, "name"):
        return
    if sampler.name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler.name!r}: choose one of {', '.join(sorted(SAMPLERS))}")
    allowed = SAMPLERS[sampler.name].params
    for key in keys:
        if key.startswith("sampler.") and key != "sampler.name" and key.split(".", 1)[1] not in allowed:
            raise ConfigError(f"{key} does not apply to sampler {sampler.name!r} "
                              f"(its parameters: {', '.join(allowed) or 'none'})")


def flatten_defaults(schema: type) -> list[tuple[str, Any]]:
    """Every key of `schema` with its default, for --help."""
    def walk(node: DictConfig, prefix: str):
        for key in node.keys():
            value = node._get_node(key)
            if isinstance(value, DictConfig):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", OmegaConf.to_container(node, resolve=True)[key]
    return list(walk(OmegaConf.structured(schema), ""))


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
