"""envs.memory: the plan's shapes are the models' (parameter counts, the released configs' defaults), and its peak is
what one env step really allocates (peak RSS of a fresh process, within 20%)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from tests.native_checkpoints import write_dream, write_llada
from unmask.envs import memory
from unmask.envs.memory import NAMED_SHAPES, plan_memory, shape_from_path, shape_of

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- shapes --------------------------------------------------------------------------------------------------
def test_params_of_the_builtin_and_released_layouts_equal_the_loaded_models(tmp_path):
    """config.json as the built-in model, LLaDA and Dream write it -> the exact parameter count load_dllm builds."""
    from unmask.envs.dllm import BUILTIN_MODEL_DIR, load_dllm

    llada = write_llada(tmp_path / "llada", d=64, heads=4, mlp=96)
    dream = write_dream(tmp_path / "dream", d=64, heads=4, kv_heads=2, ffn=96)
    for model, path in (("builtin", BUILTIN_MODEL_DIR), (str(llada), llada), (str(dream), dream)):
        dllm = load_dllm(model, device="cpu", dtype="float32")
        assert shape_from_path(path).params == parameter_count(dllm.model), model


@pytest.mark.parametrize("variant", ["llada-gqa-tied", "dream-tied", "bert-untied", "modernbert", "modernbert-biases"])
def test_params_equal_models_built_from_their_configs(variant):
    """The variants the released files do not exercise: GQA, tied heads, BERT-style models and their bias flags."""
    from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

    from unmask.envs.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModelLM

    small = {"vocab_size": 50, "max_position_embeddings": 40, "pad_token_id": 0}
    config, cls = {
        "llada-gqa-tied": (LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=48,
                                       vocab_size=50, embedding_size=56, weight_tying=True), LLaDAModelLM),
        "dream-tied": (DreamConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=1, num_hidden_layers=2,
                                   intermediate_size=48, vocab_size=50, tie_word_embeddings=True), DreamModel),
        "bert-untied": (BertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48,
                                   type_vocab_size=2, tie_word_embeddings=False, **small), BertForMaskedLM),
        "modernbert": (ModernBertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=3,
                                        intermediate_size=48, **small), ModernBertForMaskedLM),
        "modernbert-biases": (ModernBertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                               intermediate_size=48, norm_bias=True, attention_bias=True,
                                               mlp_bias=True, classifier_bias=True, tie_word_embeddings=False,
                                               **small), ModernBertForMaskedLM),
    }[variant]
    assert shape_of(config.to_dict()).params == parameter_count(cls(config))


def test_named_shapes_are_the_config_classes_defaults():
    from unmask.envs import confidence
    from unmask.envs.models import DreamConfig, LLaDAConfig

    for literal, cls in ((memory.LLADA_8B_CONFIG, LLaDAConfig), (memory.DREAM_7B_CONFIG, DreamConfig)):
        defaults = cls()
        assert literal["model_type"] == cls.model_type
        assert {k: getattr(defaults, k) for k in literal if k != "model_type"} == {
            k: v for k, v in literal.items() if k != "model_type"}
    assert round(NAMED_SHAPES["llada-8b"].params / 1e9, 2) == 8.02  # LLaDA-8B
    assert round(NAMED_SHAPES["dream-7b"].params / 1e9, 2) == 7.62  # Qwen2.5-7B's shape
    assert memory.MAX_TEMPORARY_ELEMENTS == confidence.MAX_TEMPORARY_ELEMENTS
    assert memory.FEATURES == confidence.FEATURES + confidence.HISTORY + confidence.CANVAS


def test_unknown_types_and_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="known types are llada, Dream, bert, modernbert") as err:
        shape_of({"model_type": "gpt2"})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="has no config.json"):
        shape_from_path(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        shape_from_path(tmp_path)
    with pytest.raises(ValueError, match="needs a native LLaDA or Dream"):
        plan_memory(shape_from_path(REPO / "envs" / "builtin_model"), dtype="float32", gen_length=16,
                    prompt_length=8, kv_cache="dual", device_bytes=1 << 30)


@pytest.mark.slow
def test_planning_imports_neither_torch_nor_transformers():
    """A driver plans before it loads anything heavy."""
    code = "import sys, unmask.envs.memory; assert not {'torch', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# ---- the plan ------------------------------------------------------------------------------------------------
def plan(name="llada-8b", **kwargs):
    settings = {"dtype": "bfloat16", "gen_length": 256, "prompt_length": 200, "kv_cache": "none",
                "device_bytes": 80 * 10**9, "memory_fraction": 0.9} | kwargs
    return plan_memory(NAMED_SHAPES[name], **settings)


def test_rows_fit_is_the_largest_batch_under_the_budget():
    for name in NAMED_SHAPES:
        for kv_cache in ("none", "dual"):
            p = plan(name, kv_cache=kv_cache)
            assert p.peak_bytes(p.rows_fit) <= p.budget_bytes < p.peak_bytes(p.rows_fit + 1)
            assert p.weights_bytes == 2 * NAMED_SHAPES[name].params
    assert plan(kv_cache="dual").rows_fit < plan().rows_fit
    assert plan(device_bytes=141 * 10**9).rows_fit > plan().rows_fit
    assert plan(device_bytes=16 * 10**9).rows_fit == 0  # 16 GB of weights alone do not fit 0.9 x 16 GB
    assert plan(kv_cache="dual").kv_cache_bytes_per_row == 32 * 2 * 32 * 128 * 456 * 2


def test_predict_temporaries_are_bounded_by_its_row_chunks():
    """Beyond one chunk each more row costs its logits (and cache, activations), not another float32 copy."""
    p = plan()
    assert p.predict_chunk_rows == (1 << 27) // (256 * 126464) == 4
    chunk = p.predict_chunk_rows
    slope = p.step_bytes(chunk + 11) - p.step_bytes(chunk + 10)
    assert slope == p.logits_bytes_per_row + p.state_bytes_per_row
    assert p.per_row_bytes == slope
    gumbel = plan(temperature=1.0)
    assert gumbel.predict_bytes_per_row == 256 * 126464 * 52 and gumbel.rows_fit < p.rows_fit


def test_dream_keeps_one_more_position_and_groups_pay_for_their_shared_copy():
    dream = plan("dream-7b")
    assert dream.logits_bytes_per_row == 257 * 152064 * 2  # L + 1 kept for the shift, which is a view of them
    grouped = plan(group_size=8)
    assert grouped.shared_copy_bytes_per_row == 256 * 126464 * 2
    assert "share" in grouped.phases(64, first_step=True) and "share" not in grouped.phases(64)


def test_the_plan_renders_and_serialises():
    p = plan(kv_cache="dual")
    text = p.table()
    assert "weights      14.93 GiB" in text and f"{p.rows_fit} rows fit" in text and "kv cache" in text
    assert json.loads(json.dumps(p.to_dict()))["rows_fit"] == p.rows_fit


# ---- plan vs measured ----------------------------------------------------------------------------------------
MEASURE = r"""
import gc, json, re, sys
import torch
torch.set_num_threads(1)
from unmask.envs.dllm import DLLM
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModelLM

def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

def measure(case):
    fields = {k: v for k, v in case["config"].items() if k != "model_type"}
    dream = case["config"]["model_type"] == "Dream"
    config = DreamConfig(**fields) if dream else LLaDAConfig(**fields)
    model = (DreamModel if dream else LLaDAModelLM)(config).to(getattr(torch, case["dtype"]))
    dllm = DLLM(model, None, mask_id=config.mask_token_id, eos_id=config.eos_token_id, pad_id=config.pad_token_id,
                logit_shift=dream)
    rows, group, width = case["rows"], case["group_size"], case["prompt_length"]
    g = torch.Generator().manual_seed(0)
    distinct = [torch.randint(0, 1000, (width - i % 3,), generator=g).tolist() for i in range(-(-rows // group))]
    prompts = [p for p in distinct for _ in range(group)][:rows]  # group members next to each other, as roll_out has
    env = UnmaskingEnv(dllm, case["gen_length"], case["block_length"], temperature=case["temperature"],
                       kv_cache=case["kv_cache"])
    env.reset(prompts[:1], features=tuple(case["features"]))  # warm-up: allocator, threads, kernels
    gc.collect()
    if case["later"]:  # a later step: every row but the last finishes block 0 and refreshes its cache for block 1
        obs = env.reset(prompts, features=tuple(case["features"]))
        unmask = obs.valid.clone()
        unmask[-1] = False
        gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS (VmHWM) starts again from here (model building and earlier cases peaked apart)
    before = status("VmRSS")
    if case["later"]:
        env.step(unmask)
    else:
        env.reset(prompts, features=tuple(case["features"]))  # one forward + predict for every row
    return status("VmHWM") - before

for case in json.loads(sys.argv[1]):  # one process, one case after another: torch is imported once
    print(json.dumps({"measured_bytes": measure(case)}), flush=True)
    gc.collect()  # the case's model, env and tensors are gone (each large tensor was mapped alone: RSS falls back)
"""


def llada(d, layers=2, ffn=None):
    return {"model_type": "llada", "d_model": d, "n_heads": 4, "n_kv_heads": 4, "n_layers": layers,
            "mlp_hidden_size": ffn or 2 * d}


def dream(d, layers=2):
    return {"model_type": "Dream", "hidden_size": d, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": layers, "intermediate_size": 2 * d}


@dataclass(frozen=True)
class Case:
    label: str  # the phase the step peaks in (MemoryPlan.phases)
    config: dict
    rows: int
    gen_length: int = 32
    dtype: str = "float32"
    group_size: int = 1
    kv_cache: str = "none"
    prompt_length: int = 20
    features: tuple[str, ...] = ("confidence",)
    temperature: float = 0.0
    later: bool = False  # measure a later step (a cache refresh of all rows but one) instead of the reset

    @property
    def id(self) -> str:
        size = self.config.get("d_model") or self.config.get("hidden_size")
        return f"{self.label.replace(' ', '_')}-{size}-L{self.gen_length}-{self.rows}rows"


# The real vocabularies (126464, 152064) with small bodies: the logits and their temporaries dominate, as they do for
# the 8B models; a long prompt (512, 1000 tokens) makes the layers or the KV cache count.
CASES = [
    Case("llada predict", llada(64), rows=8),
    Case("llada predict", llada(64), rows=32),
    Case("llada predict in chunks", llada(128), rows=32, gen_length=64),
    Case("llada shared copy", llada(64), rows=24, gen_length=128, group_size=2),
    Case("llada bf16", llada(64), rows=16, dtype="bfloat16"),
    Case("llada margin+entropy", llada(64), rows=8, features=("margin", "entropy")),
    Case("llada gumbel", llada(64), rows=4, temperature=1.0),
    Case("llada layers", llada(256, 2, 1024), rows=8, gen_length=8, prompt_length=512),
    Case("llada dual cache", llada(128, 16), rows=16, gen_length=16, kv_cache="dual", prompt_length=600),
    Case("llada cache refresh beside the cache", llada(128, 16), rows=16, gen_length=16, kv_cache="dual",
         prompt_length=600, later=True),
    Case("dream shifted view", dream(64), rows=8),
    Case("dream shifted view", dream(64), rows=32),
    Case("dream dual cache groups", dream(128), rows=32, gen_length=64, group_size=4, kv_cache="dual"),
]


def measure(cases: list[Case]) -> list[int]:
    """The cases one after another in one fresh process (VmHWM reset before each measured step)."""
    args = [asdict(case) | {"block_length": 8} for case in cases]
    # glibc's mmap threshold grows to the largest block freed so far: later blocks below it come from the heap and stay
    # resident after they are freed, so RSS would also count dead tensors. A fixed threshold maps each large tensor
    # on its own and unmaps it when freed: RSS then follows the live tensors, which is what the plan counts.
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(args)], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line)["measured_bytes"] for line in out.stdout.strip().splitlines()[-len(cases):]]


def planned(case: Case) -> int:
    """The plan's peak of the measured step, less what was live before it (the weights; for a later step also the
    env's buffers and the batch's KV cache, which the plan counts in every phase)."""
    p = plan_memory(shape_of(case.config), dtype=case.dtype, gen_length=case.gen_length,
                    prompt_length=case.prompt_length, kv_cache=case.kv_cache, device_bytes=1 << 40,
                    group_size=case.group_size, features=case.features, temperature=case.temperature,
                    overhead_bytes=0)
    if not case.later:
        return p.step_bytes(case.rows, first_step=True)
    return p.step_bytes(case.rows) - case.rows * (p.kv_cache_bytes_per_row + p.state_bytes_per_row)


@pytest.fixture(scope="module")
def measured() -> dict[str, int]:
    """The cases in two fresh processes side by side (every other case each)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("the peak RSS can be reset only where /proc/self/clear_refs exists (Linux)")
    halves = [CASES[0::2], CASES[1::2]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = [b for half in pool.map(measure, halves) for b in half]
    return dict(zip([case.id for half in halves for case in half], got))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_planned_step_peak_matches_the_measured_peak_rss(case, measured):
    got, want = measured[case.id], planned(case)
    print(f"{case.id}: planned {want / MIB:.1f} MiB, measured {got / MIB:.1f} MiB, ratio {got / want:.3f}")
    assert 0.8 <= got / want <= 1.2, f"planned {want / MIB:.1f} MiB, measured {got / MIB:.1f} MiB"
