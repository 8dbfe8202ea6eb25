"""The documentation cannot drift from the code.

- The site builds with `mkdocs build --strict` (broken links, missing anchors, a command without its generated
  reference page, an unknown placeholder: each fails the build).
- THE DRIFT TEST: every `unmask ...` command line in a code block of README.md and docs/**/*.md (also after
  `ray job submit ... --`, as `.venv/bin/unmask`, and joined at `\\` line ends; docs/results/ is generated and left
  out) parses and validates for its command: it runs in-process as `main([*args, "--print-config"])` in a temporary
  directory, must exit 0 and must print no deprecation notice.
- README.md stays a landing page: at most 200 lines, every relative link resolving, the two commands as they are.

Inputs a command line takes from an earlier step are made in its temporary directory (INPUTS), repository folders it
reads are linked in (LINKED), and absolute placeholder paths are moved inside it (PLACEHOLDERS).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from unmask.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
TWO_COMMANDS = (
    "bash scripts/setup.sh && .venv/bin/unmask pareto   # 1. set up a fresh machine, run the main job on the built-in "
    "default",
    "bash scripts/test.sh                               # 2. the whole test suite (CI runs exactly this: .ci/run)",
)

# ---- the fixtures of the drift test: small and explicit -----------------------------------------------------------
PLACEHOLDERS = {"/shared/": "shared/"}  # absolute paths in the docs -> inside the command's temporary directory
LINKED = ("configs", "docs/results/policies", "bench/assets")  # repository folders commands read, linked in as they are
POLICY = ROOT / "bench" / "assets" / "policy-builtin"  # what a policy input is made from
DLLM = ROOT / "envs" / "builtin_model"  # what a dLLM input is (linked)
# (command, key) -> the input a command reads there ("*": any command), made when the path does not exist: a policy (a
# copy of POLICY whose config says it was made at the command's own canvas and KV cache), a dLLM, a task file or data
# folder, a run to resume (the command's default config.yaml and a tune/ folder)
INPUTS = {("train", "init_from"): "policy", ("sweep", "init_from"): "policy", ("pretrain", "init_from"): "dllm",
          ("*", "sampler.checkpoint"): "policy", ("*", "task.path"): "data", ("*", "task.test_path"): "data",
          ("*", "resume"): "run"}


def input_kind(command: str, arg: str) -> str | None:
    key = arg.partition("=")[0]
    return INPUTS.get((command, key), INPUTS.get(("*", key)))
SHELL_SEPARATORS = ("&&", "||", ";", "|", "&")


def doc_files() -> list[Path]:
    return [README] + sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).parts[0] != "results")


def code_lines(text: str):
    """(line number, logical line) of the shell code blocks: fenced blocks without a language or in bash/sh/shell/
    console, with `\\`-continued lines joined."""
    fence, language, pending, start = None, "", "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        match = re.match(r"^(`{3,}|~{3,})\s*([\w-]*)", stripped)
        if match and (fence is None or match.group(1).startswith(fence)):
            if fence is None:
                fence, language = match.group(1), match.group(2).lower()
            else:
                fence = None
            continue
        if fence is None or language not in ("", "bash", "sh", "shell", "console"):
            continue
        stripped = re.sub(r"^\$\s+", "", stripped) if not pending else stripped
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""


def unmask_commands(line: str) -> list[list[str]]:
    """The argument lists of the `unmask` invocations in one shell line (after `--`, `&&`, env assignments...)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)  # `a;b` is three tokens, `# ...` a comment
    lexer.whitespace_split = True
    tokens = list(lexer)
    found = []
    for i, token in enumerate(tokens):
        if token != "unmask" and not token.endswith("/unmask"):
            continue
        before = tokens[:i]
        tail = list(reversed(before))
        head = next((j for j, t in enumerate(tail) if t in (*SHELL_SEPARATORS, "--")), len(tail))
        if before and head == len(tail) and not all(re.match(r"^[A-Z_][A-Z0-9_]*=", t) for t in before):
            continue  # an argument of another program, not a command
        if head < len(tail) and not all(re.match(r"^[A-Z_][A-Z0-9_]*=", t) for t in tail[:head]):
            continue
        args = []
        for t in tokens[i + 1:]:
            if t in SHELL_SEPARATORS:
                break
            args.append(t)
        found.append(args)
    return found


def documented_commands() -> list:
    params = []
    for path in doc_files():
        for number, line in code_lines(path.read_text()):
            for args in unmask_commands(line):
                where = f"{path.relative_to(ROOT)}:{number}"
                params.append(pytest.param(args, id=f"{where} unmask {args[0] if args else ''}"))
    return params


COMMAND_LINES = documented_commands()


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--print-config"])
    return code, out.getvalue(), err.getvalue()


def placed(args: list[str], here: Path) -> list[str]:
    """The placeholders' absolute paths moved into `here`; any other absolute path is a mistake of the docs (or a
    new placeholder for PLACEHOLDERS)."""
    out = []
    for arg in args:
        for prefix, inside in PLACEHOLDERS.items():
            arg = arg.replace(f"={prefix}", f"={here / inside}").replace(f"[{prefix}", f"[{here / inside}")
            arg = arg.replace(f",{prefix}", f",{here / inside}")
        value = arg.partition("=")[2]
        assert not (value.startswith("/") and not value.startswith(str(here))), (
            f"{arg}: an absolute path outside PLACEHOLDERS ({', '.join(PLACEHOLDERS)})")
        out.append(arg)
    return out


def make_inputs(args: list[str], resolved: dict, command: str) -> None:
    """What the command line reads from an earlier step, where it names a path that does not exist."""
    for arg in args:
        value = arg.partition("=")[2]
        kind = input_kind(command, arg)
        if kind is None or not value or Path(value).exists() or value.startswith(("s3://", "gs://")):
            continue
        path = Path(value)
        if kind == "policy" and "/" in value and not value.startswith(("runs/", "/", "docs/", "bench/")):
            continue  # a hub id
        if kind == "policy":
            shutil.copytree(POLICY, path)
            config = json.loads((path / "config.json").read_text())
            env = resolved.get("env", {})
            config["training"].update(gen_length=env.get("gen_length", 24), kv_cache=env.get("kv_cache", "none"))
            (path / "config.json").write_text(json.dumps(config))
        elif kind == "dllm":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(DLLM, target_is_directory=True)
        elif kind == "data" and path.suffix == ".jsonl":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({"prompt": f"{w}=", "answer": w}) + "\n" for w in ("ab", "cd", "ef")))
        elif kind == "data":
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "run":
            path.mkdir(parents=True, exist_ok=True)
            code, saved, err = run([command])
            assert code == 0, err
            (path / "config.yaml").write_text(saved)
            (path / "tune").mkdir()


@pytest.mark.parametrize("args", COMMAND_LINES)
def test_every_documented_command_line_parses_and_validates(args, tmp_path, monkeypatch):
    assert args and args[0] in COMMANDS, f"unmask {' '.join(args)}: not a command ({', '.join(COMMANDS)})"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNMASK_DEBUG", "")  # restored after the test, whatever a --debug line sets
    for folder in LINKED:
        (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder).symlink_to(ROOT / folder, target_is_directory=True)
    args = placed(args, tmp_path)
    made_later = [a for a in args if input_kind(args[0], a) in ("policy", "run")]
    resolved: dict = {}
    if made_later and "--help" not in args:  # the canvas the command resolves to, for the inputs made at it
        code, out, err = run([a for a in args if a not in made_later])
        assert code == 0, f"unmask {' '.join(args)}: {err.strip()}"
        resolved = yaml.safe_load(out)
    make_inputs(args, resolved, args[0])
    code, _, err = run(args)
    assert code == 0, f"unmask {' '.join(args)}: {err.strip()}"
    assert "deprecated" not in err, f"unmask {' '.join(args)} uses an old spelling: {err.strip()}"


def test_the_docs_hold_command_lines_of_every_command():
    """The extractor finds what the docs show (a broken extractor would pass everything)."""
    seen = {p.values[0][0] for p in COMMAND_LINES if p.values[0]}
    assert {"eval", "pareto", "pretrain", "imitate", "train", "sweep", "reproduce", "frontier", "own-tasks"} <= seen
    assert len(COMMAND_LINES) >= 40
    assert unmask_commands("ray job submit --address http://h:8265 --working-dir . -- unmask train a=1") == [
        ["train", "a=1"]]
    assert unmask_commands("bash scripts/setup.sh && .venv/bin/unmask pareto  # x") == [["pareto"]]
    assert unmask_commands("UNMASK_DEBUG=1 unmask eval k=v; echo unmask") == [["eval", "k=v"]]


def deprecated_spellings() -> set[str]:
    """The old spellings of keys (every schema's `renamed`) that cannot be read as anything else: dotted or with an
    underscore, and not the last part of a key of today (`gen_length` is also `env.gen_length`'s name)."""
    from unmask.cli.parse import describe_keys

    keys = {key for c in COMMANDS.values() for key, _, _ in describe_keys(c.schema)}
    names = {key.rpartition(".")[2] for key in keys} | {key.split(".")[0] for key in keys}
    return {old for c in COMMANDS.values() for old in getattr(c.schema, "renamed", {})
            if ("." in old or "_" in old) and old not in keys and old not in names}


def spelled_old(text: str) -> list[str]:
    text = text.replace("\\", "")  # the generated tables escape Markdown
    return [f"{old} in ...{text[max(0, m.start() - 50):m.end() + 10]!r}" for old in sorted(deprecated_spellings())
            for m in re.finditer(rf"(?<![\w.]){re.escape(old)}(?![\w])", text)]


def test_no_deprecated_spelling_in_the_docs():
    for path in doc_files():
        assert not spelled_old(path.read_text()), f"{path.relative_to(ROOT)}: {spelled_old(path.read_text())}"


def test_no_deprecated_spelling_in_the_generated_reference():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    pages = {name: hooks.command_page(name) for name in COMMANDS} | {"index": hooks.cli_index_page()}
    found = {name: spelled_old(text) for name, text in pages.items() if spelled_old(text)}
    assert not found, found


def test_readme_is_a_landing_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 200, "README.md is a landing page: at most 200 lines (the rest goes to docs/)"
    for line in TWO_COMMANDS:
        assert line in text, f"the README's two commands changed: {line!r}"
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"^[a-z]+://|^#|^mailto:", link):
            continue
        assert (ROOT / link.split("#")[0]).exists(), f"README.md links to {link}, which does not exist"


def test_every_sampler_is_in_the_samplers_table():
    from unmask.envs.config import SAMPLER_PARAMS

    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| ([^|]*) \|", (DOCS / "concepts" /
                                                                                       "samplers.md").read_text(),
                                                        flags=re.MULTILINE)}
    assert set(rows) == set(SAMPLER_PARAMS)
    for name, params in SAMPLER_PARAMS.items():
        assert re.findall(r"`(\w+)`", rows[name]) == list(params), f"{name}: the table's parameters differ"


def test_the_site_builds_strictly(tmp_path, monkeypatch):
    """`mkdocs build --strict`: in-process (about two seconds), from the repository root (snippets read from there)."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    monkeypatch.chdir(ROOT)
    config = load_config(config_file=str(ROOT / "mkdocs.yml"), site_dir=str(tmp_path / "site"), strict=True)
    build(config)
    site = tmp_path / "site"
    for name in COMMANDS:  # the generated reference of every command
        page = (site / "reference" / "cli" / name / "index.html").read_text()
        assert f"unmask {name}" in page
    api = (site / "reference" / "api" / "index.html").read_text()
    import unmask

    for name, target in unmask.API.items():
        assert f'id="{target.replace(":", ".")}"' in api, f"unmask.{name} is not documented"
    assert "out_dir/trajectories/iter_" in (site / "guides" / "trajectories" / "index.html").read_text()
