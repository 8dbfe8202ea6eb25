"""Answer verifiers, chosen by name: exact, numeric, math (math-verify), or `module:function`."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

Verifier = Callable[[str, str], bool]  # (completion, reference answer) -> correct?

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def exact(completion: str, reference: str) -> bool:
    return completion.strip() == reference.strip()


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric(completion: str, reference: str) -> bool:
    """The last number in the completion equals the reference's (|difference| < 1e-6), as the paper's GSM8K check."""
    got, want = last_number(completion), last_number(reference)
    return got is not None and want is not None and abs(got - want) < 1e-6


def math_equivalent(completion: str, reference: str) -> bool:
    """Symbolic equivalence through the `math-verify` library (LaTeX, \\boxed{}, fractions, ...)."""
    from math_verify import parse, verify

    delimited = reference.lstrip().startswith(("$", "\\(", "\\[")) or "\\boxed" in reference
    gold = parse(reference if delimited else f"${reference}$")  # bare LaTeX (`\\sqrt{2}`) needs delimiters
    answer = parse(completion)
    return bool(gold) and bool(answer) and bool(verify(gold, answer))


BUILTIN_VERIFIERS: dict[str, Verifier] = {"exact": exact, "numeric": numeric, "math": math_equivalent}


def resolve_verifier(name: str) -> Verifier:
    if name in BUILTIN_VERIFIERS:
        return BUILTIN_VERIFIERS[name]
    if ":" not in name:
        raise ValueError(f"unknown verifier {name!r}: use exact, numeric, math or module:function")
    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import verifier {name!r}: {err}") from None
    if not callable(fn):
        raise ValueError(f"verifier {name!r} is not callable")
    return fn
