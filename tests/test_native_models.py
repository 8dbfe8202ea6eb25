"""Native LLaDA and Dream: official-layout checkpoints load through the public entry points without remote
code; chat templates, logit shift, batching under left padding, the prefix KV cache, and bad input."""

import json
import os

import pytest
import torch

from tests.native_checkpoints import saved_tensors, write_dream, write_gsm8k, write_llada
from unmask.envs.config import SamplerConfig
from unmask.envs.dllm import ModelLoadError, layout_batch, load_dllm
from unmask.envs.mdp import UnmaskingEnv
from unmask.rollout.samplers import make_sampler

WRITERS = {"llada": write_llada, "dream": write_dream}


@pytest.fixture(scope="module", params=["llada", "dream"])
def native_dir(request, tmp_path_factory):
    return request.param, str(WRITERS[request.param](tmp_path_factory.mktemp(request.param)))


@pytest.fixture(scope="module")
def native(native_dir):
    return native_dir[0], load_dllm(native_dir[1])


def test_official_layout_loads_every_tensor_without_remote_code(native_dir):
    kind, path = native_dir
    dllm = load_dllm(path)  # trust_remote_code is off: the config's auto_map must not be needed
    assert type(dllm.model).__name__ == {"llada": "LLaDAModelLM", "dream": "DreamModel"}[kind]
    state, saved = dllm.model.state_dict(), saved_tensors(path)
    assert set(state) == set(saved)  # no missing and no unexpected parameter names
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    assert dllm.supports_kv_cache


def test_save_pretrained_keeps_the_official_layout(native_dir, tmp_path):
    """A native model saved by us reloads identically and is still an official-layout checkpoint."""
    _, path = native_dir
    dllm = load_dllm(path)
    dllm.model.save_pretrained(tmp_path / "copy")
    dllm.tokenizer.save_pretrained(tmp_path / "copy")
    again = load_dllm(str(tmp_path / "copy"))
    from safetensors.torch import load_file

    saved = {}
    for file in (tmp_path / "copy").glob("*.safetensors"):
        saved |= load_file(str(file))
    assert set(saved) == set(saved_tensors(path))
    ids, attn = layout_batch(dllm.encode_prompts(["round trip"]), 4, dllm.pad_id, dllm.mask_id)
    torch.testing.assert_close(again.logits(ids, attn), dllm.logits(ids, attn))


def test_native_classes_win_after_remote_code_claimed_the_model_type(tmp_path):
    """The official remote code registers its own `llada` config when imported; loading must still use ours."""
    from transformers import AutoConfig, PreTrainedConfig

    class ForeignLLaDAConfig(PreTrainedConfig):
        model_type = "llada"

    AutoConfig.register("llada", ForeignLLaDAConfig, exist_ok=True)
    dllm = load_dllm(str(write_llada(tmp_path / "m")))
    assert type(dllm.model).__name__ == "LLaDAModelLM"
    assert type(dllm.model.config).__module__ == "unmask.envs.models.llada"


def test_special_tokens_and_chat_template(native):
    kind, dllm = native
    tok = dllm.tokenizer
    assert dllm.mask_id == tok.mask_token_id and dllm.eos_id == tok.eos_token_id
    assert dllm.logit_shift == (kind == "dream") and dllm.chat_template
    text = tok.decode(dllm.encode_prompts(["What is 2+3?"], "<reasoning>")[0])
    expected = {
        "llada": "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n<reasoning>",
        "dream": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+3?"
                 "<|im_end|>\n<|im_start|>assistant\n<reasoning>",
    }[kind]
    assert text == expected
    # the answer ends at the end-of-turn token as well as at EOS padding
    end_of_turn = tok.convert_tokens_to_ids("<|eot_id|>" if kind == "llada" else "<|im_end|>")
    answer = tok("42", add_special_tokens=False)["input_ids"]
    assert dllm.decode_answer(answer + [end_of_turn] + [dllm.eos_id] * 3) == "42"


def test_chat_template_can_be_switched_off(native_dir):
    _, path = native_dir
    plain = load_dllm(path, chat_template="off")
    assert plain.tokenizer.decode(plain.encode_prompts(["hi"])[0]) == "hi"
    with pytest.raises(ModelLoadError, match="chat_template"):
        load_dllm(path, chat_template="maybe")


def test_dream_logits_are_shifted_by_one_position(native):
    kind, dllm = native
    ids, attn = layout_batch(dllm.encode_prompts(["abc"]), 6, dllm.pad_id, dllm.mask_id)
    raw = dllm.model(input_ids=ids, attention_mask=attn).logits
    aligned = dllm.logits(ids, attn)
    if kind == "dream":
        torch.testing.assert_close(aligned[:, 1:], raw[:, :-1])
        torch.testing.assert_close(aligned[:, 0], raw[:, 0])
    else:
        torch.testing.assert_close(aligned, raw)


def test_batched_left_padding_equals_one_at_a_time(native):
    _, dllm = native
    prompts = dllm.encode_prompts(["a much longer question here?", "short?", "mid size?"])
    ids, attn = layout_batch(prompts, 8, dllm.pad_id, dllm.mask_id)
    batched = dllm.logits(ids, attn)[:, -8:]
    for row, prompt in enumerate(prompts):
        alone = dllm.logits(*layout_batch([prompt], 8, dllm.pad_id, dllm.mask_id))[:, -8:]
        torch.testing.assert_close(batched[row], alone[0], atol=1e-4, rtol=1e-4)


def test_pairwise_4d_mask_as_dream_generation_builds_it(native):
    """Dream's generation code passes a pairwise boolean mask [B, 1, N, N] and `tok_idx` positions; the
    native model accepts it and gives real positions what the 2D padding mask gives them."""
    _, dllm = native
    prompts = dllm.encode_prompts(["a much longer question?", "short?"])
    ids, attn = layout_batch(prompts, 6, dllm.pad_id, dllm.mask_id)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    pairwise = (attn.bool()[:, None, None, :] & attn.bool()[:, None, :, None])
    with torch.no_grad():
        two_d = dllm.model(input_ids=ids, attention_mask=attn, position_ids=positions).logits
        four_d = dllm.model(input_ids=ids, attention_mask=pairwise, position_ids=positions).logits
    real = attn.bool()
    assert torch.isfinite(four_d).all()
    torch.testing.assert_close(four_d[real], two_d[real])


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_forward_reproduces_the_full_forward_when_nothing_changed(native, mode):
    """Right after a refresh the cache is exact, so a cached forward must equal the full one on every
    position it returns: positions, masks, GQA, the dual cache's splice and Dream's shift all line up."""
    _, dllm = native
    prompts = dllm.encode_prompts(["a longer prompt", "tiny"])
    ids, attn = layout_batch(prompts, 12, dllm.pad_id, dllm.mask_id)
    ids[:, -12:-8] = 5  # a finished first block
    full = dllm.logits(ids, attn)
    refreshed, cache = dllm.logits_and_cache(ids, attn)
    torch.testing.assert_close(refreshed, full)
    start = ids.shape[1] - 8
    end = start + 4 if mode == "dual" else None
    cached = dllm.logits_with_cache(ids, attn, cache, start, end)
    assert cached.shape[1] == (4 if mode == "dual" else 8)
    torch.testing.assert_close(cached, full[:, start:start + cached.shape[1]], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_decoding_agrees_where_it_must(native, mode):
    """Cached and uncached envs take the same first step (a refresh is a full forward); afterwards the
    cached run sees stale keys/values, so later steps may differ, but it decodes every position with the
    same NFE accounting and refreshes once per block."""
    _, dllm = native
    prompts = dllm.encode_prompts(["what is one plus one", "two", "three"])
    sampler = make_sampler(SamplerConfig(name="top_k", steps=8))  # 2 tokens per step, 2 steps per block
    runs = {}
    for cache in ("none", mode):
        env = UnmaskingEnv(dllm, gen_length=16, block_length=4, kv_cache=cache)
        obs = env.reset(prompts)
        first = obs.confidence.clone()
        while not env.done:
            obs = env.step(sampler.select(obs))
        runs[cache] = (env.canvas(), env.nfe.clone(), first, env)
    assert torch.equal(runs[mode][1], runs["none"][1])  # 2 forwards per block either way
    assert (runs[mode][0] != dllm.mask_id).all()
    torch.testing.assert_close(runs[mode][2], runs["none"][2])
    assert runs[mode][3].engine.cached_block.tolist() == [3, 3, 3]  # refreshed for every block, up to the last


def first_valid(obs, per_row: list[int]) -> torch.Tensor:
    """Unmask the leftmost `per_row[r]` valid positions of row r: rows drift into different blocks."""
    rank = obs.valid.long().cumsum(-1)
    return obs.valid & (rank <= torch.tensor(per_row)[:, None])


@pytest.mark.parametrize("mode", ["none", "prefix", "dual"])
def test_rows_in_different_blocks_decode_as_if_alone(native, mode):
    """Rows finish blocks at different steps, so cached and refreshing rows share forwards; each row must
    still get exactly what it gets alone (same tokens, same NFE)."""
    _, dllm = native
    prompts = dllm.encode_prompts(["first prompt", "second", "a third prompt here"])
    per_row = [4, 1, 2]

    def decode(rows):
        env = UnmaskingEnv(dllm, gen_length=12, block_length=4, kv_cache=mode)
        obs = env.reset([prompts[r] for r in rows])
        while not env.done:
            obs = env.step(first_valid(obs, [per_row[r] for r in rows]))
        return env.canvas(), env.nfe.clone()

    canvas, nfe = decode([0, 1, 2])
    assert nfe.tolist() == [3, 12, 6]
    for r in range(3):
        alone_canvas, alone_nfe = decode([r])
        assert torch.equal(canvas[r], alone_canvas[0]) and nfe[r] == alone_nfe[0]


@pytest.mark.parametrize("mode", ["none", "prefix", "dual"])
def test_continuous_batching_under_a_cache_decodes_each_row_as_alone(native, mode):
    """A finished row takes the next prompt while its neighbours are mid-block with warm caches: every
    trajectory still decodes exactly as it does alone. (A prompt longer than the batch's would widen every
    row's padding and refresh every row's cache early; here the longest comes first.)"""
    _, dllm = native
    prompts = dllm.encode_prompts(["a third prompt here, longer", "first prompt", "second", "x"])
    per_row = [4, 1, 2, 3]
    env = UnmaskingEnv(dllm, gen_length=12, block_length=4, kv_cache=mode)
    obs, running, nxt = env.reset(prompts[:2]), [0, 1], 2
    done = {}
    while True:  # as rollout.trajectories.roll_out: decide, finish, admit, then one forward for everyone
        env.apply(first_valid(obs, [per_row[t] for t in running]))
        finished = [r for r in range(2) if not env.active[r] and running[r] not in done]
        for r in finished:
            done[running[r]] = (env.canvas()[r], int(env.nfe[r]))
        admit = finished[: len(prompts) - nxt]
        if admit:
            env.start_rows(admit, prompts[nxt : nxt + len(admit)])
            for r in admit:
                running[r], nxt = nxt, nxt + 1
        if env.done:
            break
        obs = env.observe()
    for t, prompt in enumerate(prompts):
        alone = UnmaskingEnv(dllm, gen_length=12, block_length=4, kv_cache=mode)
        o = alone.reset([prompt])
        while not alone.done:
            o = alone.step(first_valid(o, [per_row[t]]))
        assert torch.equal(done[t][0], alone.canvas()[0]) and done[t][1] == int(alone.nfe[0]), t


@pytest.mark.parametrize("mode", ["none", "prefix", "dual"])
def test_a_longer_prompt_joining_widens_the_batch(native, mode):
    """A finished row takes a prompt longer than any in flight: every row's padding grows (with a cache, every
    running row refreshes); each row keeps its canvas and NFE so far and every episode ends."""
    _, dllm = native
    prompts = dllm.encode_prompts(["short", "a prompt", "a much longer prompt than the others"])
    env = UnmaskingEnv(dllm, gen_length=8, block_length=4, kv_cache=mode)
    obs = env.reset(prompts[:2])
    env.apply(first_valid(obs, [4, 1]))  # row 0 writes its first block, row 1 one token
    env.apply(first_valid(env.observe(), [4, 1]))  # row 0 is done
    before = env.canvas()[1].clone()
    env.start_rows([0], [prompts[2]])
    obs = env.observe()
    assert env.ids.shape[1] == len(prompts[2]) + 8 and torch.equal(env.canvas()[1], before)
    while not env.done:
        obs = env.step(first_valid(obs, [1, 1]))
    assert (env.canvas() != dllm.mask_id).all() and env.nfe.tolist() == [8, 8]


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_env_feeds_only_what_the_cache_does_not_hold(native, mode, monkeypatch):
    """The point of the caches: after a block's first forward, the prefix cache feeds block + later
    positions, the dual cache the block alone."""
    _, dllm = native
    widths = []
    real = dllm.model.forward

    def spy(input_ids, **kwargs):
        widths.append(input_ids.shape[1])
        return real(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(dllm.model, "forward", spy)
    env = UnmaskingEnv(dllm, gen_length=12, block_length=4, kv_cache=mode)
    prompt = dllm.encode_prompts(["abcdef"])
    obs = env.reset(prompt)
    sampler = make_sampler(SamplerConfig(name="top_k", steps=6))  # 2 steps per block
    while not env.done:
        obs = env.step(sampler.select(obs))
    total, shift = len(prompt[0]) + 12, 1 if dllm.logit_shift else 0  # Dream also feeds the position before
    fed = [12, 8, 4] if mode == "prefix" else [4, 4, 4]
    assert widths == [w for f in fed for w in (total, f + shift)]


@pytest.mark.slow
def test_unmask_eval_on_a_native_model_with_gsm8k_and_a_kv_cache(native_dir, tmp_path):
    """The user's command line, as for LLaDA-8B-Instruct on GSM8K, on the tiny official-layout checkpoint."""
    import subprocess
    import sys

    _, path = native_dir
    out = tmp_path / "eval.json"
    res = subprocess.run([sys.executable, "-m", "unmask.cli", "eval", f"model={path}", "task=gsm8k",
                          f"task.path={write_gsm8k(tmp_path / 'gsm8k')}", "env.gen_length=16", "env.block_length=8",
                          "env.kv_cache=dual", "sampler=top_k", "sampler.steps=4", "num_examples=4",
                          f"out_dir={tmp_path}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    # LLaDA's schedule, 2 blocks x 2 steps: exactly 4 forwards (the first of each block refreshes the cache)
    assert data["num_examples"] == 4 and data["mean_nfe"] == 4 and data["tokens_per_step"] == 4
    assert data["config"]["env"]["kv_cache"] == "dual" and data["config"]["task"]["name"] == "gsm8k"
    assert all(isinstance(s["completion"], str) for s in data["samples"])


def test_kv_cache_needs_a_native_model(tiny_dllm, native):
    with pytest.raises(ValueError, match="kv_cache=prefix needs a native LLaDA or Dream model"):
        UnmaskingEnv(tiny_dllm, gen_length=8, block_length=4, kv_cache="prefix")
    with pytest.raises(ValueError, match="unknown env.kv_cache 'yes'"):
        UnmaskingEnv(native[1], gen_length=8, block_length=4, kv_cache="yes")


def test_bfloat16_and_device_map_loading(native_dir):
    _, path = native_dir
    bf16 = load_dllm(path, dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    ids, attn = layout_batch(bf16.encode_prompts(["abc"]), 4, bf16.pad_id, bf16.mask_id)
    assert torch.isfinite(bf16.logits(ids, attn).float()).all()
    mapped = load_dllm(path, device_map="auto")  # accelerate's placement; one CPU here
    assert mapped.device.type in ("cpu", "cuda")


def test_unsupported_variant_is_a_one_line_error(tmp_path):
    path = write_llada(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"block_type": "sequential"}))
    with pytest.raises(ModelLoadError, match="block_type='sequential'"):
        load_dllm(str(path))


def test_remote_code_models_load_only_when_trusted(tmp_path, tiny_model_dir):
    """Other remote-code dLLMs stay usable, opt-in: a config whose class lives in the model directory."""
    import shutil

    path = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, path)
    (path / "modeling_custom.py").write_text(
        "from transformers import BertConfig, BertForMaskedLM\n\n"
        "class CustomConfig(BertConfig):\n    model_type = 'custom_dllm'\n\n"
        "class CustomDLLM(BertForMaskedLM):\n    config_class = CustomConfig\n"
    )
    config = json.loads((path / "config.json").read_text())
    config |= {"model_type": "custom_dllm", "architectures": ["CustomDLLM"],
               "auto_map": {"AutoConfig": "modeling_custom.CustomConfig",
                            "AutoModelForMaskedLM": "modeling_custom.CustomDLLM"}}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_dllm(str(path))
    dllm = load_dllm(str(path), trust_remote_code=True)
    assert type(dllm.model).__name__ == "CustomDLLM"


@pytest.mark.external
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_parity_with_the_official_remote_code(kind, dtype, tmp_path):
    """Numerical parity with the released modeling code, on the user's machine (docs/development/tests.md, "Parity");
    the external tier (`pytest --external`), which fails without the official files."""
    code_dir = os.environ.get(f"UNMASK_{kind.upper()}_REMOTE_CODE")
    assert code_dir, (f"set UNMASK_{kind.upper()}_REMOTE_CODE=<dir with modeling_{kind}.py> "
                      "(docs/development/tests.md: Parity)")
    from tests.parity import official_logits

    path = WRITERS[kind](tmp_path / "m", layers=3)
    dllm = load_dllm(str(path), dtype=dtype)
    ids = torch.tensor([dllm.encode_prompts(["parity check: 12+30="])[0] + [dllm.mask_id] * 8])
    ours = dllm.model(input_ids=ids).logits  # unshifted, as the official forward returns them
    theirs = official_logits(kind, code_dir, path, ids, dtype=getattr(torch, dtype))
    tolerance = {"float32": 2e-5, "bfloat16": 2e-2}[dtype]
    torch.testing.assert_close(ours.float(), theirs.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.slow
def test_gpu_validation_script_runs_end_to_end_on_cpu(local_ray, tmp_path, monkeypatch):
    """bench/gpu_validation.py is the one command a GPU session runs; keep it working (tiny, on CPU, in this
    process and its Ray)."""
    import importlib
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    script = importlib.import_module("gpu_validation")
    out = tmp_path / "gpu.md"
    script.main(["device=cpu", "layers=1", "d_model=64", "vocab=512", "gen_length=16", "block_length=8",
                 "prompt_tokens=8", "eval_examples=4", "batch=2", "steps=8", "train_iterations=2", f"out={out}"])
    table = out.read_text()
    for row in ("`unmask eval` placement", "kv_cache=none", "kv_cache=prefix", "kv_cache=dual", "policy share",
                "`unmask train`", "final evaluation, on the env runner"):
        assert row in table, row
    assert "2 iterations" in table and "cpu, float32" in table and "ran on env runner 1" in table
    sys.modules.pop("gpu_validation")
