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


def parse(schema: type, args: list[str], command: str, base: Any = None) -> Any:
    """The dataclass instance for `schema` with `args` (key=value) applied, over `base` (a saved config)
    when given."""
    dotlist = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got {arg!r} (see: unmask {command} --help)")
        key, value = arg.split("=", 1)
        if key in NAMED_NODES and dataclasses.is_dataclass(_field_type(schema, key)):
            key = f"{key}.name"
        dotlist.append(f"{key}={value}")
    structured = OmegaConf.structured(schema)
    OmegaConf.set_struct(structured, True)
    for key in structured.keys():  # plain dict fields (a sweep's grid) take new keys; dataclass nodes do not
        node = structured._get_node(key)
        if isinstance(node, DictConfig) and node._metadata.object_type in (None, dict):
            OmegaConf.set_struct(node, False)
    try:
        if base is not None:
            structured = OmegaConf.merge(structured, base)
        merged = OmegaConf.merge(structured, OmegaConf.from_dotlist(dotlist))
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


def resume_config(schema: type, args: list[str], command: str) -> Any:
    """`resume=<run dir>`: the config saved in that directory; keys given beside `resume` must agree with it
    (a run continues with the config it started with)."""
    from pathlib import Path

    cfg = parse(schema, args, command)
    run_dir = Path(cfg.resume).resolve()
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file() or not (run_dir / "tune").is_dir():
        raise ConfigError(f"resume={cfg.resume}: no run to resume there (config.yaml and tune/ are missing)")
    try:
        saved_yaml = OmegaConf.load(saved_file)
    except Exception as err:  # noqa: BLE001 - any unreadable YAML is the same one-line error
        raise ConfigError(f"resume={cfg.resume}: config.yaml is unreadable ({str(err).splitlines()[0]})") from None
    others = [a for a in args if not a.startswith("resume=")]
    saved = _flat(to_dict(parse(schema, [], command, base=saved_yaml)))
    resumed = parse(schema, others, command, base=saved_yaml)
    for key, value in _flat(to_dict(resumed)).items():
        if key not in ("resume", "ray_address") and saved.get(key) != value:
            raise ConfigError(f"resume={cfg.resume} was started with {key}={saved.get(key)!r}, not {value!r}: "
                              "a run resumes with its own config")
    resumed.resume, resumed.run_dir = str(run_dir), str(run_dir)
    return resumed


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "grid":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
