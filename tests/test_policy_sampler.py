"""The learned policy as an RLlib module/distribution and as `sampler=policy`, against direct computations."""

import json
import math

import pytest
import torch
from ray.rllib.core.columns import Columns

from unmask.cli.main import main
from unmask.envs.config import SamplerConfig
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.optim import warmup_cosine
from unmask.learner.config import PolicyConfig
from unmask.learner.module import FactorisedBernoulli, UnmaskRLModule
from unmask.learner.policy import UnmaskingPolicy, load_policy, save_policy
from unmask.learner.sampler import PolicySampler
from unmask.rollout.samplers import make_sampler

SMALL = PolicyConfig(hidden_size=16, num_heads=2, ffn_size=32, time_embed_size=16, inputs=["confidence"])


def test_factorised_bernoulli_logp_is_the_product_over_valid_positions():
    logits = torch.tensor([[0.0, 2.0, -1.0, 3.0]])
    valid = torch.tensor([[True, True, True, False]])
    action = torch.tensor([[True, False, True, True]])  # the invalid position's action must not count
    dist = FactorisedBernoulli(logits, valid, temperature=0.5)
    s = [1 / (1 + math.exp(-b / 0.5)) for b in (0.0, 2.0, -1.0)]
    expected = math.log(s[0]) + math.log(1 - s[1]) + math.log(s[2])
    assert dist.logp(action).item() == pytest.approx(expected, rel=1e-6)
    entropy = sum(-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in s)
    assert dist.entropy().item() == pytest.approx(entropy, rel=1e-5)
    assert dist.kl(dist).item() == pytest.approx(0.0, abs=1e-6)
    draws = torch.stack([dist.sample(generator=torch.Generator().manual_seed(i)) for i in range(400)])
    assert not draws[..., 3].any()  # never outside the valid set
    assert draws[..., 0].float().mean().item() == pytest.approx(0.5, abs=0.08)


def test_rl_module_runs_the_policy_only_on_active_steps():
    module = UnmaskRLModule(observation_space=None, action_space=None, model_config=vars(SMALL))
    N, T, L = 2, 3, 6
    batch = {"confidences": torch.rand(N, T, L), "mask": torch.rand(N, T, L) > 0.3, "t": torch.rand(N, T),
             "active": torch.tensor([[True, True, False], [True, False, False]])}
    out = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
    direct = module.policy(batch["confidences"][0, :2], batch["mask"][0, :2], batch["t"][0, :2])
    assert torch.allclose(out[0, :2], direct, atol=1e-6)
    assert not out[0, 2].any() and not out[1, 1:].any()
    inference = module.forward_inference({k: batch[k][:, 0] for k in ("confidences", "mask", "t")})
    assert torch.allclose(inference[Columns.ACTION_DIST_INPUTS][0], direct[0], atol=1e-6)


def test_warmup_then_cosine_schedule_is_transformers_and_holds_at_the_end():
    schedule = warmup_cosine(4, 14)
    assert [schedule(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert schedule(9) == pytest.approx(0.5)  # halfway through the decay
    assert schedule(14) == pytest.approx(0.0) and schedule(99) == pytest.approx(0.0)  # no second cosine
    floor = warmup_cosine(0, 10, min_lr_rate=0.1)
    assert floor(0) == 1.0 and floor(5) == pytest.approx(0.55) and floor(50) == pytest.approx(0.1)


def observation(tiny_dllm, cycles):
    env = UnmaskingEnv(tiny_dllm, gen_length=16, block_length=8)
    return env.reset(tiny_dllm.encode_prompts([ex.prompt for ex in cycles.examples("test", 3)]))


def policy_with_bias(bias: float) -> UnmaskingPolicy:
    policy = UnmaskingPolicy(SMALL)
    torch.nn.init.zeros_(policy.head.weight)
    torch.nn.init.constant_(policy.head.bias, bias)
    return policy


def test_eval_fallback_and_beta_scaling(tiny_dllm, cycles):
    obs = observation(tiny_dllm, cycles)
    never = PolicySampler(SamplerConfig(name="policy"), torch.Generator().manual_seed(0), policy=policy_with_bias(-30))
    chosen = never.select(obs)
    assert chosen.sum(-1).tolist() == [1, 1, 1]  # argmax fallback: exactly one per row
    assert not (chosen & ~obs.valid).any()
    assert never.stats() == {"fallback_share": 1.0}  # every decision was the fallback's, and it says so
    action, logp = never.act(obs)  # training: no fallback
    assert not action.any() and torch.allclose(logp, torch.zeros(3), atol=1e-6)
    half = policy_with_bias(0.0)  # s = 0.5 everywhere; beta = 2 makes every valid position certain
    doubled = PolicySampler(SamplerConfig(name="policy", beta=2.0), torch.Generator().manual_seed(0), policy=half)
    assert torch.equal(doubled.select(obs), obs.valid)
    assert doubled.stats() == {"fallback_share": 0.0} and doubled.steps == 3


def test_saved_policy_round_trip_and_unmask_eval(tiny_model_dir, tmp_path, capsys):
    torch.manual_seed(0)
    policy = UnmaskingPolicy(SMALL)
    torch.nn.init.zeros_(policy.head.weight)  # every logit is the initial bias -2, whatever ran before
    save_policy(policy, tmp_path / "pol", {"policy_version": 3})
    loaded = load_policy(tmp_path / "pol")
    c, m, t = torch.rand(2, 16), torch.ones(2, 16, dtype=torch.bool), torch.tensor([0.0, 0.5])
    assert torch.equal(loaded(c, m, t), policy.eval()(c, m, t))
    sampler = make_sampler(SamplerConfig(name="policy", checkpoint=str(tmp_path / "pol")))
    assert isinstance(sampler, PolicySampler)
    out = tmp_path / "eval.json"
    assert main(["eval", f"model={tiny_model_dir}", "sampler=policy", f"sampler.checkpoint={tmp_path / 'pol'}",
                 "sampler.policy_temperature=0.5", "env.gen_length=16", "num_examples=6", f"out_dir={tmp_path}",
                 "progress=false"]) == 0
    result = json.loads(out.read_text())
    # a fresh policy (unmask probability sigmoid(-2) ~ 0.12 at tau = 1, sharper at tau = 0.5) mostly leans
    # on the one-per-step fallback: close to one token per step, so close to L = 16 forwards
    assert result["num_examples"] == 6 and 14 <= result["mean_nfe"] <= 16 and result["still_masked"] == 0
    assert 0.5 < result["fallback_share"] <= 1.0  # reported beside accuracy: the policy leans on the fallback
    assert "fallback_share" in capsys.readouterr().out
    assert result["config"]["sampler"]["policy_temperature"] == 0.5
    (tmp_path / "pol" / "model.safetensors").write_bytes(b"not a safetensors file")
    assert main(["eval", f"model={tiny_model_dir}", "sampler=policy", f"sampler.checkpoint={tmp_path / 'pol'}",
                 "env.gen_length=16", f"out_dir={tmp_path}"]) == 2
    assert "corrupted" in capsys.readouterr().err
    assert main(["eval", f"model={tiny_model_dir}", "sampler=policy", f"out_dir={tmp_path}"]) == 2
    assert "sampler.checkpoint" in capsys.readouterr().err



def test_policy_is_a_hugging_face_model_and_old_checkpoints_still_load(tmp_path):
    from dataclasses import asdict

    from safetensors.torch import save_file

    from unmask.learner.policy import policy_info

    policy = UnmaskingPolicy(SMALL)
    policy.save_pretrained(tmp_path / "hf")  # the mixin's own layout
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    again = UnmaskingPolicy.from_pretrained(tmp_path / "hf")
    assert again.config == SMALL and all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(),
                                                                           again.state_dict().values()))
    # a checkpoint written before the Hugging Face layout: policy.safetensors + policy.json
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(legacy / "policy.safetensors"))
    (legacy / "policy.json").write_text(json.dumps({"policy": asdict(SMALL), "alpha": 0.3, "block_length": 24}))
    old = load_policy(legacy)
    c, m, t = torch.rand(2, 16), torch.ones(2, 16, dtype=torch.bool), torch.tensor([0.0, 0.5])
    assert torch.equal(old(c, m, t), policy.eval()(c, m, t))
    assert policy_info(legacy) == {"alpha": 0.3, "block_length": 24}
    assert PolicySampler(SamplerConfig(name="policy", checkpoint=str(legacy))).describe() == \
        "policy alpha=0.3 block_length=24"
    with pytest.raises(FileNotFoundError, match="no policy checkpoint"):
        load_policy(tmp_path / "nothing-here")


def test_generate_with_a_heuristic_or_an_in_memory_policy(tiny_dllm, cycles):
    from unmask.envs.config import EnvConfig
    from unmask.rollout.generation import generate
    from unmask.rollout.samplers import sampler

    prompts = [ex.prompt for ex in cycles.examples("test", 5)]
    env = EnvConfig(gen_length=8, block_length=4)
    out = generate(tiny_dllm, prompts, sampler("top_k", steps=4), env, batch_size=2)
    assert [g.nfe for g in out] == [4] * 5 and all(g.abandoned == 0 for g in out)  # 2 blocks x 2 steps
    assert all(sorted(g.unmask_step) == [0, 0, 1, 1, 2, 2, 3, 3] for g in out)  # 2 tokens at each forward
    assert [g.text for g in out] == [tiny_dllm.decode_answer(g.tokens) for g in out]
    policy = sampler("policy", policy=policy_with_bias(30.0))  # unmasks the whole block at once
    assert [g.nfe for g in generate(tiny_dllm, prompts, policy, env)] == [2] * 5


@pytest.mark.slow
def test_a_checkpoint_from_before_policy_inputs_decodes_exactly_as_it_did():
    """bench/assets/policy-builtin was saved before PolicyConfig.inputs existed: it loads as the paper's
    confidence-only policy and decodes exactly what the code before them decoded (at 5e0b8ba, same prompts and
    seed: 0.7 @ 9.005 NFE on 200 test prompts in full diffusion)."""
    from pathlib import Path

    from unmask.envs.config import EnvConfig
    from unmask.rollout.config import EvalConfig
    from unmask.rollout.evaluate import evaluate

    checkpoint = Path(__file__).resolve().parents[1] / "bench" / "assets" / "policy-builtin"
    assert "inputs" not in json.loads((checkpoint / "config.json").read_text())
    assert load_policy(checkpoint).config.inputs == ["confidence"]
    result = evaluate(EvalConfig(sampler=SamplerConfig(name="policy", checkpoint=str(checkpoint)), num_examples=200,
                                 env=EnvConfig(block_length=24), progress=False))
    assert (result["accuracy"], result["mean_nfe"]) == (0.7, 9.005)
    assert result["fallback_share"] == pytest.approx(0.1687951138256524, abs=1e-12)
    assert [e["completion"] for e in result["examples"][:3]] == [">bifa,cg,d,ehjb", ">ad,efib,a", ">c,ef,a,di,bhg,jc"]


def test_every_policy_input_a_config_may_name_is_computed_from_an_observation():
    from unmask.learner.config import POLICY_INPUTS
    from unmask.learner.sampler import INPUTS

    assert tuple(INPUTS) == POLICY_INPUTS
