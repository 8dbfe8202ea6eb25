"""Build-time pages of the documentation site (mkdocs.yml `hooks:`): what is generated from the code cannot drift.

- `reference/cli/<command>.md`, one page per command of `unmask.cli.main.COMMANDS` (written in `on_files`): its
  usage, flags and every key with its default as typed on the command line and its description, from
  `cli.parse.describe_keys` over the command's typed config, whose field comments are the descriptions (the same
  source as `unmask <command> --help`). A command without a page in the nav fails the build.
- placeholders in hand-written pages, replaced in `on_page_markdown` (an unknown one fails the build):
    <!-- generated: commands -->           the commands and the flags
    <!-- generated: trajectory-schema -->  rollout.trajectories.TRAJECTORY_SCHEMA, with its fields' comments
    <!-- generated: memory-plan -->        envs.memory.plan_memory for LLaDA-8B and Dream-7B
    <!-- generated: cluster-plan -->       the shipped cluster config on 1, 8 and 16 GPUs
    <!-- generated: python-api -->         one mkdocstrings block per name of unmask.API
- mkdocstrings reads the source without importing it (griffe). The layers are the folders beside `unmask/`, installed
  as `unmask.envs`, `unmask.learner`, ...; `on_config` builds a temporary tree of links named as installed, so that
  `::: unmask.envs.dllm.load_dllm` resolves from a source checkout.

Only configs, `envs.memory` and `rollout.trajectories` (numpy, pyarrow) are imported: no torch, no Ray.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shutil
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("envs", "learner", "rollout", "cluster", "experiments", "cli")  # pyproject.toml's package-dir
CLI_DIR = "reference/cli"
MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")

# the memory plan's table (docs/guides/cluster.md): the paper's prompt budget, two canvases, an H100 and an H200
PLAN_PROMPT_TOKENS = 200
PLAN_GEN_LENGTHS = (256, 1024)
PLAN_DEVICES_GB = (80, 141)
PLAN_CACHES = ("none", "dual")
CLUSTER_CONFIG = "configs/llada8b-gsm8k.yaml"
CLUSTERS = (  # GPUs -> the keys given beside the shipped config (it is the 8-GPU setup)
    (1, ["num_env_runners=1"]),
    (8, []),
    (16, ["num_env_runners=16", "groups_per_update=32"]),
)

_api_tree: Path | None = None


# ---- events --------------------------------------------------------------------------------------------------------
@event_priority(100)  # before mkdocstrings' own on_config, which may create the python handler
def on_config(config):
    """mkdocstrings' python handler searches a tree where the layers sit inside `unmask/`, as installed."""
    global _api_tree
    _api_tree = Path(tempfile.mkdtemp(prefix="unmask-docs-api-"))
    package = _api_tree / "unmask"
    package.mkdir()
    (package / "__init__.py").symlink_to(ROOT / "unmask" / "__init__.py")
    for layer in LAYERS:
        (package / layer).symlink_to(ROOT / layer, target_is_directory=True)
    plugin = config.plugins.get("mkdocstrings")
    if plugin is None:
        raise PluginError("docs/hooks.py: the mkdocstrings plugin is not configured")
    plugin.config["handlers"].setdefault("python", {})["paths"] = [str(_api_tree)]
    return config


def on_files(files, config):
    from unmask.cli.main import COMMANDS

    files.append(File.generated(config, f"{CLI_DIR}/index.md", content=cli_index_page()))
    for name in COMMANDS:
        files.append(File.generated(config, f"{CLI_DIR}/{name}.md", content=command_page(name)))
    return files


def on_nav(nav, config, files):
    from unmask.cli.main import COMMANDS

    listed = {page.file.src_uri for page in nav.pages}
    missing = [name for name in COMMANDS if f"{CLI_DIR}/{name}.md" not in listed]
    if missing or f"{CLI_DIR}/index.md" not in listed:
        raise PluginError(f"docs/hooks.py: mkdocs.yml's nav lacks the CLI reference of {', '.join(missing) or 'index'}"
                          f" ({CLI_DIR}/<command>.md): add it under Reference")
    return nav


def on_page_markdown(markdown, page, config, files):
    def expand(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_uri}: unknown placeholder <!-- generated: {name} --> "
                              f"(known: {', '.join(GENERATORS)})")
        return GENERATORS[name](page.file.src_uri)

    return MARKER.sub(expand, markdown)


def on_post_build(config):
    global _api_tree
    if _api_tree is not None:
        shutil.rmtree(_api_tree, ignore_errors=True)
        _api_tree = None


# ---- markdown helpers ---------------------------------------------------------------------------------------------
def cell(text: str) -> str:
    """Plain text as one table cell: code spans kept, pipes and the characters Markdown would read as markup escaped
    outside them."""
    parts = re.split(r"(`[^`]*`)", str(text))
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(part.replace("|", "\\|"))
        else:
            out.append(re.sub(r"([|*_<>\[\]\\])", r"\\\1", part))
    return "".join(out)


def code(text: str) -> str:
    text = str(text).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---- the CLI reference --------------------------------------------------------------------------------------------
def flags_of(name: str) -> dict[str, str]:
    from unmask.cli.main import COMMANDS, FLAGS
    from unmask.envs.config import DLLMSettings

    plans = issubclass(COMMANDS[name].schema, DLLMSettings)
    return {flag: text for flag, text in FLAGS.items() if flag != "--plan" or plans}


def cli_index_page() -> str:
    return ("# Command line\n\n"
            "Every command takes `key=value` overrides of its typed config; `config=FILE.yaml` starts from a saved "
            "config (a run's `config.yaml`; several are merged in order) and the keys given beside it apply on top. "
            "These pages are generated when the site is built, from the same configs and field comments that "
            "`unmask <command> --help` prints.\n\n" + commands_table(f"{CLI_DIR}/index.md"))


def commands_table(page: str) -> str:
    """The commands (linked to their pages, relative to `page`) and the flags."""
    from unmask.cli.main import COMMANDS, FLAGS

    here = posixpath.relpath(CLI_DIR, posixpath.dirname(page) or ".")

    def rows(experiment: bool) -> list[list[str]]:
        return [[f"[`unmask {name}`]({here}/{name}.md)", cell(c.summary)] for name, c in COMMANDS.items()
                if c.experiment == experiment]

    flags = [[code(flag), cell(text)] for flag, text in FLAGS.items()]
    return ("## Commands\n\n" + table(["command", "what it does"], rows(False))
            + "\n## Experiments\n\nThe commands that made the pages under Results.\n\n"
            + table(["command", "what it does"], rows(True))
            + "\n## Flags\n\n" + table(["flag", "what it does"], flags))


def command_page(name: str) -> str:
    from unmask.cli.main import COMMANDS
    from unmask.cli.parse import cli_literal, describe_keys
    from unmask.envs.config import SAMPLER_PARAMS

    command = COMMANDS[name]
    flags = flags_of(name)
    usage = (f"unmask {name} [config=FILE.yaml ...] [key=value ...] "
             + " ".join(f"[{flag}]" for flag in flags if flag != "--help"))
    out = [f"# unmask {name}", "", cell(command.summary[0].upper() + command.summary[1:]) + ".", "",
           "```text", usage, "```", "",
           "Generated from the command's typed config (`" + command.schema.__module__ + "."
           + command.schema.__qualname__ + "`): `unmask " + name + " --help` prints the same keys.", "",
           "## Flags", "", table(["flag", "what it does"], [[code(f), cell(t)] for f, t in flags.items()])]
    groups: dict[str, list[tuple[str, object, str]]] = {}
    for key, default, text in describe_keys(command.schema):
        section = key.split(".")[0] if "." in key else ""
        groups.setdefault(section, []).append((key, default, text))
    for section, keys in groups.items():
        out += [f"## {'Keys' if not section else f'`{section}.*`'}", ""]
        if section in ("task", "sampler"):
            out += [f"`{section}=NAME` is short for `{section}.name=NAME`.", ""]
        out.append(table(["key", "default", "what it does"],
                         [[code(key), code(cli_literal(default)), cell(text)] for key, default, text in keys]))
    if hasattr(command.schema, "start_defaults"):
        from unmask.cluster.config import FROM_POLICY

        out += ["## From a saved policy", "",
                "With `init_from=` (a saved policy, e.g. `unmask imitate`'s) and not `resume=`, the keys below take "
                "these values unless given on the command line or in a config file (`cluster.config.FROM_POLICY`; "
                "the run says so when it starts):", "",
                table(["key", "from a saved policy"],
                      [[code(k), code(cli_literal(v))] for k, v in FROM_POLICY.items()])]
    if any(f.name == "sampler" for f in dataclasses.fields(command.schema)):
        out += ["## Samplers", "",
                "`sampler=NAME` and the `sampler.<param>` keys that sampler reads; any other `sampler.*` key is an "
                "error. What each one does: [Samplers](../../concepts/samplers.md).", "",
                table(["sampler", "reads"], [[code(s), ", ".join(code(f"sampler.{p}") for p in params) or "-"]
                                             for s, params in sorted(SAMPLER_PARAMS.items())])]
    return "\n".join(out) + "\n"


# ---- generated tables in hand-written pages -----------------------------------------------------------------------
def trajectory_schema(page: str = "") -> str:
    """The dump's columns, types and comments, from rollout/trajectories.py itself."""
    from unmask.rollout.trajectories import SCHEMA_VERSION, SCHEMA_VERSION_KEY, TRAJECTORY_SCHEMA

    source = (ROOT / "rollout" / "trajectories.py").read_text()
    comments = dict(re.findall(r'pa\.field\("(\w+)",.*#\s*(.+)$', source, flags=re.MULTILINE))
    rows = []
    for field in TRAJECTORY_SCHEMA:
        meaning = comments.get(field.name) or SCHEMA_NOTES.get(field.name, "")
        if not meaning:
            raise PluginError(f"docs/hooks.py: trajectory column {field.name!r} has no comment in "
                              "rollout/trajectories.py and no note in SCHEMA_NOTES")
        rows.append([code(field.name), code(arrow_type(field.type)), cell(meaning)])
    return (f"Schema version {SCHEMA_VERSION} (the Parquet metadata key `{SCHEMA_VERSION_KEY}`); one row per "
            "decision a trajectory took, so the per-trajectory columns repeat on each of its rows.\n\n"
            + table(["column", "type", "meaning"], rows))


SCHEMA_NOTES = {  # columns whose line in TRAJECTORY_SCHEMA carries no comment
    "run_id": "the run's `run_id` (default: the run directory's name; in a sweep, the trial's)",
    "env_runner": "the env runner that sampled it (1-based; 0: the algorithm's own process)",
    "prompt_id": "the task example's id",
    "reward": "the trajectory's reward (`grpo.reward` at its group's alpha)",
    "correct": "the trajectory's answer verified",
    "nfe": "the trajectory's dLLM forwards (its number of rows)",
    "completion": "the decoded answer; an abandoned position shows the mask token",
}


def arrow_type(kind) -> str:
    import pyarrow as pa

    if pa.types.is_list(kind):
        return f"list<{arrow_type(kind.value_type)}>"
    return {"float": "float32", "double": "float64"}.get(str(kind), str(kind))


def memory_plan(page: str = "") -> str:
    """envs.memory.plan_memory for the two released shapes: what `--plan` prints, for sizes you may not have here."""
    from unmask.envs.memory import GIB, MIB, NAMED_SHAPES, plan_memory

    rows = []
    for name in ("llada-8b", "dream-7b"):
        for gen_length in PLAN_GEN_LENGTHS:
            for gb in PLAN_DEVICES_GB:
                for cache in PLAN_CACHES:
                    common = dict(dtype="bfloat16", gen_length=gen_length, prompt_length=PLAN_PROMPT_TOKENS,
                                  kv_cache=cache, device_bytes=int(gb * 1e9), memory_fraction=0.9)
                    train = plan_memory(NAMED_SHAPES[name], group_size=8, **common)
                    evaluate = plan_memory(NAMED_SHAPES[name], group_size=1, **common)
                    rows.append([name, str(gen_length), f"{gb} GB", cache, f"{train.weights_bytes / GIB:.1f} GiB",
                                 f"{train.per_row_bytes / MIB:.0f} MiB", str(train.rows_fit), str(evaluate.rows_fit)])
    return table(["model", "L", "GPU", "`env.kv_cache`", "weights", "per row at the peak (G = 8)",
                  "rows that fit: training (groups of 8)", "evaluation"], rows)


def cluster_plan(page: str = "") -> str:
    """The shipped config on 1, 8 and 16 GPUs: its runners, what each keeps in flight, what an update takes."""
    from unmask.cli.main import load_config
    from unmask.envs.memory import NAMED_SHAPES, plan_memory

    rows = []
    for gpus, keys in CLUSTERS:
        cfg = load_config("train", [f"config={ROOT / CLUSTER_CONFIG}", *keys])
        members = cfg.rollout.group_size + len(cfg.rollout.expert.thresholds)
        wanted = cfg.rollout.prompts_per_sample * members
        plan = plan_memory(NAMED_SHAPES["llada-8b"], dtype="bfloat16", gen_length=cfg.env.gen_length,
                           prompt_length=PLAN_PROMPT_TOKENS, kv_cache=cfg.env.kv_cache, device_bytes=int(80e9),
                           memory_fraction=cfg.env.gpu_memory_fraction, group_size=members)
        rows_in_flight = cfg.env.batch_size or min(plan.rows_fit, wanted)
        cpus = 1 + cfg.num_env_runners * cfg.num_cpus_per_env_runner
        gpu_count = cfg.num_env_runners * cfg.num_gpus_per_env_runner + cfg.num_gpus_per_learner
        samples = -(-cfg.groups_per_update // cfg.rollout.prompts_per_sample)
        rows.append([str(gpus), " ".join(code(k) for k in keys) or "(as shipped)", str(cfg.num_env_runners),
                     f"{rows_in_flight} ({cfg.rollout.prompts_per_sample} prompts x {members})",
                     str(cfg.groups_per_update), f"{samples} ({samples / cfg.num_env_runners:g} per runner)",
                     f"{cpus:g} CPUs, {gpu_count:g} GPU{'' if gpu_count == 1 else 's'}"])
    return table(["GPUs", "keys beside the config", "env runners", "rows in flight per runner",
                  "prompts per update", "samples per update", "Ray resources (runners + learner)"], rows)


def python_api(page: str = "") -> str:
    """A mkdocstrings block per name of unmask.API, grouped as unmask/__init__.py groups them."""
    import unmask

    titles: dict[str, str] = {}
    title = "Other"
    source = (ROOT / "unmask" / "__init__.py").read_text()
    body = source[source.index("API = {"):]
    body = body[:body.index("\n}")]
    for line in body.splitlines()[1:]:
        line = line.strip()
        if line.startswith("#"):
            title = line.lstrip("# ").split(" (")[0]
            title = title[0].upper() + title[1:]
        elif match := re.match(r'"(\w+)":', line):
            titles[match.group(1)] = title
    groups: dict[str, list[str]] = {}
    for name in unmask.API:
        groups.setdefault(titles.get(name, "Other"), []).append(name)
    out = [table(["name", "is"], [[f"[`unmask.{name}`](#{unmask.API[name].replace(':', '.')})",
                                    code(unmask.API[name].replace(":", "."))] for name in unmask.API]), ""]
    for title, names in groups.items():
        out += [f"## {title}", ""]
        for name in names:
            module, _, attribute = unmask.API[name].partition(":")
            out += [f"::: {module}.{attribute}", "    options:", f"      heading: \"unmask.{name}\"",
                    f"      toc_label: \"unmask.{name}\"", ""]
    return "\n".join(out) + "\n"


GENERATORS = {"commands": commands_table, "trajectory-schema": trajectory_schema, "memory-plan": memory_plan,
              "cluster-plan": cluster_plan, "python-api": python_api}
