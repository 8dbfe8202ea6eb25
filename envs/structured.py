"""Structured configs (OmegaConf dataclasses) to and from plain data and YAML: the helpers every layer shares (the
command line's own parsing is cli.parse). No heavy imports."""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
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


# ---- keys: their descriptions and their deprecated spellings -------------------------------------------------------
def field_comments(schema: type) -> dict[str, str]:
    """Each field's description as its dataclass source writes it: the `# ...` after the field with the comment lines
    that continue it (`#` then two or more spaces), else the comment block just above it. `--help` and the generated
    CLI reference print these, so a key is described in one place: beside its default."""
    found: dict[str, str] = {}
    for klass in reversed(schema.__mro__):
        if dataclasses.is_dataclass(klass) and "__dataclass_fields__" in vars(klass):
            try:
                source = textwrap.dedent(inspect.getsource(klass))
            except (OSError, TypeError):  # no source (a frozen install): keys go undescribed
                continue
            found.update(_comments_in(source, set(getattr(klass, "__annotations__", {}))))
    return found


def _comments_in(source: str, names: set[str]) -> dict[str, str]:
    comments: dict[int, str] = {}  # line -> the comment on it
    code_lines: set[int] = set()  # lines with a token other than a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    lines = source.splitlines()
    out = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"    (\w+)\s*:", line)
        if not match or match.group(1) not in names:
            continue
        parts = []
        if number in comments:  # trailing, then its continuation lines
            parts.append(comments[number])
            follow = number + 1
            while follow in comments and follow not in code_lines and re.match(r"#\s{2,}", comments[follow]):
                parts.append(comments[follow])
                follow += 1
        else:  # the block just above
            above = number - 1
            while above in comments and above not in code_lines and not re.match(r"#\s{2,}", comments[above]):
                parts.insert(0, comments[above])
                above -= 1
        text = " ".join(part.lstrip("#").strip() for part in parts)
        if text:
            out[match.group(1)] = text
    return out


Renamed = dict[str, "str | tuple[str, Any]"]  # old key -> new key, or (new key, function of the old value)


def renamed_key(renamed: Renamed, key: str) -> tuple[str, Any] | None:
    """(the new spelling of a deprecated dotted key, its value's conversion or None); None if `key` is current. An
    old section name renames every key under it (`rollout.env` -> `env`: `rollout.env.block_length` ->
    `env.block_length`)."""
    for old in sorted(renamed, key=len, reverse=True):
        if key == old or key.startswith(old + "."):
            new, convert = renamed[old] if isinstance(renamed[old], tuple) else (renamed[old], None)
            return new + key[len(old):], convert
    return None


def flat_items(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A mapping's leaves as (dotted key, value); an empty mapping is a leaf."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=False)
    if not isinstance(data, dict) or not data:
        return [(prefix[:-1], data)] if prefix else []
    return [item for key, value in data.items() for item in flat_items(value, f"{prefix}{key}.")]


def nested(items: list[tuple[str, Any]]) -> dict:
    """The inverse of flat_items."""
    out: dict = {}
    for key, value in items:
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def upgrade(schema: type, data: Any) -> tuple[Any, list[tuple[str, str]]]:
    """A saved config (e.g. a run's config.yaml, or a file given as config=) with its deprecated keys renamed to the
    schema's current ones; also the (old, new) pairs renamed, for the caller's notices."""
    renamed = getattr(schema, "renamed", {})
    items, notes = [], []
    for key, value in flat_items(data):
        new = renamed_key(renamed, key)
        if new is not None:
            notes.append((key, new[0]))
            key, value = new[0], value if new[1] is None else new[1](value)
        items.append((key, value))
    return (OmegaConf.create(nested(items)) if notes else data), notes
