"""The command line's parsing: `key=value` (dotlist) arguments over an OmegaConf structured dataclass.

- unknown keys and values of the wrong type are errors (struct mode);
- `sampler=NAME` / `task=NAME` (and `rollout.task=NAME`, ...) are shorthands for `sampler.name=NAME` /
  `task.name=NAME`;
- a `sampler.<param>` that the chosen sampler does not read is an error, so a typo cannot be ignored;
- a key a command does not use (its schema's `unused_keys`) is an error;
- `config=<file.yaml>` starts from a saved config (every run saves its own), the other keys apply on top;
- `resume=<run dir>` starts from that run's saved config.
No heavy imports: a command checks its whole configuration before it loads torch, transformers or Ray.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from unmask.envs.config import SAMPLER_PARAMS
from unmask.envs.structured import load_yaml

NAMED_NODES = ("sampler", "task")


class ConfigError(ValueError):
    """A bad command line; the message is one line."""


def parse(schema: type, args: list[str], command: str, base: Any = None) -> Any:
    """The dataclass instance for `schema` with `args` (key=value) applied, over `base` (a saved config or
    a dataclass instance) when given."""
    dotlist = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got {arg!r} (see: unmask {command} --help)")
        key, value = arg.split("=", 1)
        if key.rpartition(".")[2] in NAMED_NODES and dataclasses.is_dataclass(_field_default(schema, key)):
            key = f"{key}.name"  # task=NAME, rollout.task=NAME, sampler=NAME: the node's name
        earlier = next((d.split("=", 1)[1] for d in dotlist if d.split("=", 1)[0] == key), None)
        if earlier is not None and earlier != value:
            raise ConfigError(f"{key} is given twice ({earlier} and {value}): give it once")
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
        cfg = OmegaConf.to_object(OmegaConf.merge(structured, OmegaConf.from_dotlist(dotlist)))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        if "not in struct" in msg or "Key" in msg and "not" in msg:
            raise ConfigError(f"unknown key {key!r} for 'unmask {command}' (see: unmask {command} --help)") from None
        if key is None and "is not a subclass of" in msg:  # a section given a value: `env: 5`
            kind = re.search(r"is not a subclass of (\w+)", msg).group(1)
            names = " or ".join(_sections(schema, kind)) or kind
            raise ConfigError(f"{names} was given a single value ({msg.split('value:')[-1].strip()}): it is a "
                              f"section of keys ({names}.<key>=..., or in YAML a mapping)") from None
        raise ConfigError(f"bad value for {key!r}: {msg}") from None
    keys = [d.split("=", 1)[0] for d in dotlist]
    _check_unused_keys(schema, keys, command)
    _check_sampler_params(cfg, keys)
    if hasattr(cfg, "start_defaults"):  # keys whose default depends on another key (train from a saved policy)
        cfg.start_defaults(set(keys) | _given_keys(base))
    return cfg


def _given_keys(base: Any) -> set[str]:
    """The dotted keys a base config sets: all of them for a dataclass, those in the file for a saved config."""
    if base is None:
        return set()
    node = OmegaConf.structured(base) if dataclasses.is_dataclass(base) else OmegaConf.create(base)

    def walk(n: Any, prefix: str) -> set[str]:
        if not isinstance(n, DictConfig):
            return {prefix[:-1]}
        return set().union(*(walk(n._get_node(k), f"{prefix}{k}.") for k in n.keys())) if len(n) else set()

    return walk(node, "")


def _sections(schema: type, kind: str, prefix: str = "") -> list[str]:
    """The dotted names of the sections (dataclass fields) of type `kind` in a schema."""
    found = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            name = f"{prefix}{f.name}"
            found += ([name] if type(default).__name__ == kind else []) + _sections(type(default), kind, f"{name}.")
    return found


def _field_default(schema: type, key: str):
    """The default at a dotted key of a dataclass schema (None if there is no such key)."""
    node: Any = schema
    for name in key.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        match = [f for f in dataclasses.fields(node) if f.name == name]
        if not match:
            return None
        f = match[0]
        node = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return node


def _check_unused_keys(schema: type, keys: list[str], command: str) -> None:
    for key in keys:
        hint = getattr(schema, "unused_keys", {}).get(key)
        if hint:
            raise ConfigError(f"{key} is not used by 'unmask {command}': {hint}")


def _check_sampler_params(cfg: Any, keys: list[str]) -> None:
    sampler = getattr(cfg, "sampler", None)
    if sampler is None or not hasattr(sampler, "name"):
        return
    if sampler.name not in SAMPLER_PARAMS:
        raise ConfigError(f"unknown sampler {sampler.name!r}: choose one of {', '.join(sorted(SAMPLER_PARAMS))}")
    allowed = SAMPLER_PARAMS[sampler.name]
    for key in keys:
        if key.startswith("sampler.") and key != "sampler.name" and key.split(".", 1)[1] not in allowed:
            raise ConfigError(f"{key} does not apply to sampler {sampler.name!r} "
                              f"(its parameters: {', '.join(allowed) or 'none'})")


def flatten_defaults(schema: type) -> list[tuple[str, Any]]:
    """Every key of `schema` with its default, for --help (a plain dict field is one key, shown whole)."""
    def walk(node: DictConfig, prefix: str):
        for key in node.keys():
            value = node._get_node(key)
            if isinstance(value, DictConfig) and value._metadata.object_type not in (None, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", OmegaConf.to_container(node, resolve=True)[key]
    return list(walk(OmegaConf.structured(schema), ""))


# ---- resuming ----------------------------------------------------------------------------------------
def resume_config(schema: type, args: list[str], command: str) -> Any:
    """`resume=<run dir>` [key=value ...]: the config saved in that directory with the keys applied on top;
    `cluster.rundir.claim_run_dir` then checks that they agree with it."""
    cfg = parse(schema, args, command)
    run_dir = Path(cfg.resume).resolve()
    saved = load_yaml(run_dir / "config.yaml", f"resume={cfg.resume}: no run to resume there (config.yaml)")
    others = [a for a in args if not a.startswith("resume=")]
    resumed = parse(schema, others, command, base=saved)
    resumed.resume, resumed.run_dir = str(run_dir), str(run_dir)
    return resumed
