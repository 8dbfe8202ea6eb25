"""The command line's parsing: `key=value` (dotlist) arguments over an OmegaConf structured dataclass, the same for
every command and entry point.

- unknown keys are errors with a "did you mean", values of the wrong type one-line errors naming the key and value;
- `sampler=NAME` / `task=NAME` are shorthands for `sampler.name=NAME` / `task.name=NAME`;
- a `sampler.<param>` that the chosen sampler does not read is an error, so a typo cannot be ignored;
- a key a command does not use (its schema's `unused_keys`) is an error;
- a deprecated spelling (its schema's `renamed`) still works, with a one-line notice naming the new key;
- `config=<file.yaml>` (given several times: merged in order) starts from saved configs, the other keys apply on top;
- `resume=<run dir>` starts from that run's saved config.
No heavy imports: a command checks its whole configuration before it loads torch, transformers or Ray.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from unmask.envs.config import SAMPLER_PARAMS
from unmask.envs.structured import field_comments, flat_items, load_yaml, renamed_key, upgrade

NAMED_NODES = ("sampler", "task")
RENAMED_UNTIL = "0.3"  # deprecated spellings keep working until this release


class ConfigError(ValueError):
    """A bad command line; the message is one line."""


def parse(schema: type, args: list[str], command: str, base: Any = None,
          notice: Callable[[str], None] | None = None) -> Any:
    """The dataclass instance for `schema` with `args` (key=value) applied, over `base` (a saved config or a dataclass
    instance) when given. Deprecated spellings are renamed, each with one `notice` line (stderr by default)."""
    notice = notice or (lambda line: print(line, file=sys.stderr, flush=True))
    renamed = getattr(schema, "renamed", {})
    dotlist: list[tuple[str, str]] = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got {arg!r} (see: unmask {command} --help)")
        key, value = arg.split("=", 1)
        new = renamed_key(renamed, key)
        if new is not None:
            notice(f"unmask {command}: {key} is deprecated, use {new[0]} (the old spelling works until unmask "
                   f"{RENAMED_UNTIL})")
            key, value = new[0], value if new[1] is None else str(new[1](value))
        if key.rpartition(".")[2] in NAMED_NODES and dataclasses.is_dataclass(_field_default(schema, key)):
            key = f"{key}.name"  # task=NAME, sampler=NAME: the node's name
        earlier = next((v for k, v in dotlist if k == key), None)
        if earlier is not None and earlier != value:
            raise ConfigError(f"{key} is given twice ({earlier} and {value}): give it once")
        dotlist.append((key, value))
    structured = OmegaConf.structured(schema)
    OmegaConf.set_struct(structured, True)
    for key in structured.keys():  # plain dict fields (a sweep's grid) take new keys; dataclass nodes do not
        node = structured._get_node(key)
        if isinstance(node, DictConfig) and node._metadata.object_type in (None, dict):
            OmegaConf.set_struct(node, False)
    given = dict(dotlist)
    try:
        if base is not None:
            if not dataclasses.is_dataclass(base):
                base, notes = upgrade(schema, base)
                for old, new in notes:
                    notice(f"unmask {command}: the config file's {old} is deprecated, use {new}")
            structured = OmegaConf.merge(structured, base)
        cfg = OmegaConf.to_object(OmegaConf.merge(structured, OmegaConf.from_dotlist([f"{k}={v}" for k, v in dotlist])))
    except OmegaConfBaseException as err:
        raise ConfigError(explain(schema, command, err, given)) from None
    keys = list(given)
    _check_unused_keys(schema, keys, command)
    _check_sampler_params(cfg, keys)
    if hasattr(cfg, "start_defaults"):  # keys whose default depends on another key (train from a saved policy)
        cfg.start_defaults(set(keys) | _given_keys(base))
    return cfg


def explain(schema: type, command: str, err: OmegaConfBaseException, given: dict[str, str]) -> str:
    """OmegaConf's error as the project's one line: the key, the value given, what was expected."""
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    value = given.get(key)
    shown = f"{key}={value}" if value is not None else key
    if "not in struct" in msg or "Key" in msg and "not" in msg:  # OmegaConf names the first unknown part
        return unknown_key(schema, command, next((k for k in given if k.startswith(key + ".")), key))
    if not key and "is not a subclass of" in msg:  # a section given a value: `env: 5`
        kind = re.search(r"is not a subclass of (\w+)", msg).group(1)
        names = " or ".join(_sections(schema, kind)) or kind
        return (f"{names} was given a single value ({msg.split('value:')[-1].strip()}): it is a section of keys "
                f"({names}.<key>=..., or in YAML a mapping)")
    default = _field_default(schema, key)
    if isinstance(default, dict) or dataclasses.is_dataclass(default) or "Dict[" in msg:
        hint = suggestions(schema, key, scalar_only=True)
        return (f"{shown}: {key} is a section of keys ({key}.<key>=...), not one value"
                + (f"; did you mean {' or '.join(h + '=' + (value or '...') for h in hint)}?" if hint else ""))
    if isinstance(default, (list, tuple)) or "ListConfig" in msg:
        return f"{shown}: {key} takes a list, e.g. {key}=[{value or '...'}]"
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(type(default))
    if kind is not None and ("could not be converted" in msg or "is not a valid" in msg):
        return f"{shown}: {key} takes {kind}"
    return f"bad value for {key!r}: {msg}"


def unknown_key(schema: type, command: str, key: str) -> str:
    hint = suggestions(schema, key)
    close = f"; did you mean {' or '.join(hint)}?" if hint else ""
    return f"unknown key {key!r} for 'unmask {command}'{close} (unmask {command} --help lists every key)"


def suggestions(schema: type, key: str, scalar_only: bool = False) -> list[str]:
    """Keys of `schema` a mistyped or misplaced `key` may have meant: close spellings of the whole key, keys ending in
    the same name (`block_length` -> `env.block_length`), keys whose name contains it (`grid` -> `heuristic_grid`)."""
    keys = [k for k, _, _ in describe_keys(schema) if not (scalar_only and k == key)]
    leaf = key.rpartition(".")[2]
    leaves = {k: k.rpartition(".")[2] for k in keys}
    words = [w for w in leaf.split("_") if len(w) > 2]
    tiers = (  # the first that finds any: the closest spelling, then the same name elsewhere, then a close name
        difflib.get_close_matches(key, keys, n=1, cutoff=0.75),
        [k for k in keys if leaves[k] == leaf],
        [k for k in keys if difflib.get_close_matches(leaf, [leaves[k]], cutoff=0.8)],
        # `grids` -> heuristic_grid: a word of the name, misspelt
        [k for k in keys if any(difflib.get_close_matches(w, leaves[k].split("_"), cutoff=0.8) for w in words)],
    )
    return next((tier[:3] for tier in tiers if tier), [])


def _given_keys(base: Any) -> set[str]:
    """The dotted keys a base config sets: all of them for a dataclass, those in the file for a saved config."""
    if base is None:
        return set()
    node = OmegaConf.structured(base) if dataclasses.is_dataclass(base) else base
    return {key for key, _ in flat_items(node)}


def _sections(schema: type, kind: str, prefix: str = "") -> list[str]:
    """The dotted names of the sections (dataclass fields) of type `kind` in a schema."""
    found = []
    for f in dataclasses.fields(schema):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            name = f"{prefix}{f.name}"
            found += ([name] if type(default).__name__ == kind else []) + _sections(type(default), kind, f"{name}.")
    return found


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _field_default(schema: type, key: str):
    """The default at a dotted key of a dataclass schema (None if there is no such key)."""
    node: Any = schema
    for name in key.split("."):
        if isinstance(node, dict):
            node = node.get(name)
            continue
        if not dataclasses.is_dataclass(node):
            return None
        match = [f for f in dataclasses.fields(node) if f.name == name]
        if not match:
            return None
        node = _default(match[0])
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


# ---- what --help and the CLI reference show ---------------------------------------------------------------------
def describe_keys(schema: type) -> list[tuple[str, Any, str]]:
    """Every key a command takes: (dotted key, default, description from the dataclass's field comments), in the
    schema's order; a plain dict field is one key, shown whole; keys the command does not use are left out."""
    unused = getattr(schema, "unused_keys", {})

    def walk(node: type, prefix: str):
        comments = field_comments(node)
        for f in dataclasses.fields(node):
            default = _default(f)
            if dataclasses.is_dataclass(default):
                yield from walk(type(default), f"{prefix}{f.name}.")
            elif f"{prefix}{f.name}" not in unused:
                yield f"{prefix}{f.name}", default, comments.get(f.name, "")

    return list(walk(schema, ""))


def cli_literal(value: Any) -> str:
    """A default as it is typed on the command line: true, null, [0.9,0.99], "" (an empty string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(cli_literal(v) for v in value) + "]"
    if isinstance(value, (dict, DictConfig)):
        return "{" + ",".join(f"{k}:{cli_literal(v)}" for k, v in dict(value).items()) + "}"
    return repr(value) if isinstance(value, float) else str(value)


def keys_help(schema: type, width: int = 118) -> list[str]:
    """`  key=default   description` lines, the description wrapped under itself."""
    rows = [(f"{key}={cli_literal(default)}", text) for key, default, text in describe_keys(schema)]
    column = min(42, max(len(left) for left, _ in rows) + 2)
    out = []
    for left, text in rows:
        wrapped = textwrap.wrap(text, width - column - 2) or [""]
        if len(left) + 2 > column:  # a long default: the description starts on the next line
            out.append(f"  {left}")
            out += [" " * (column + 2) + line for line in wrapped if line]
        else:
            out.append(f"  {left:<{column}}{wrapped[0]}".rstrip())
            out += [" " * (column + 2) + line for line in wrapped[1:]]
    return out


# ---- saved configs -------------------------------------------------------------------------------------------
def merged_files(paths: list[str]) -> DictConfig | None:
    """config=a.yaml config=b.yaml: the files merged in order (b's keys over a's)."""
    configs = [load_yaml(path, f"config={path}") for path in paths]
    return OmegaConf.merge(*configs) if configs else None


def resume_config(schema: type, args: list[str], command: str) -> Any:
    """`resume=<run dir>` [key=value ...]: the config saved in that directory with the keys applied on top;
    `cluster.rundir.claim_run_dir` then checks that they agree with it."""
    cfg = parse(schema, args, command)
    run_dir = Path(cfg.resume).resolve()
    saved = load_yaml(run_dir / "config.yaml", f"resume={cfg.resume}: no run to resume there (config.yaml)")
    others = [a for a in args if not a.startswith("resume=")]
    resumed = parse(schema, others, command, base=saved)
    resumed.resume, resumed.out_dir = str(run_dir), str(run_dir)
    return resumed
