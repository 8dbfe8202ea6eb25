"""An RLlib EnvRunner that hosts one frozen-dLLM environment (on a GPU when it is given one).

The model is loaded once per actor. Each `sample()` pulls the newest policy weights (if any) from the
algorithm's weight board (cluster.weights), so the learner never waits for a runner and a runner never waits
for the learner (pull-based sync, as IMPALA/APPO do), then rolls out `prompts_per_sample` prompts x G
group members (plus one per expert, expert steering) as one batched env and returns complete groups,
each stamped with the policy version that produced it and each at its own reward trade-off alpha.
"""

from __future__ import annotations

import dataclasses
import random
import time
import traceback
from dataclasses import dataclass

import ray
import torch
from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.env import INPUT_ENV_SPACES
from ray.rllib.env.env_runner import EnvRunner
from ray.rllib.utils.checkpoints import Checkpointable
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from unmask.envs.config import SamplerConfig
from unmask.envs.dllm import load_env_dllm
from unmask.envs.mdp import UnmaskingEnv
from unmask.envs.memory import batch_rows
from unmask.envs.seeds import seed_globals
from unmask.envs.tasks import make_task
from unmask.learner.grpo import draw_alphas, reward
from unmask.learner.sampler import PolicySampler
from unmask.rollout.collect import collect_groups
from unmask.rollout.config import EvalConfig
from unmask.rollout.evaluate import final_eval, placement, run_episodes
from unmask.rollout.experts import ExpertSteering
from unmask.rollout.trajectories import TrajectoryBatch


@dataclass
class RunnerFailure:
    """What a runner returns instead of a sample (or a validation) when that work raised: the cause in one line and the
    whole traceback. Returned, not raised, so that the algorithm sees every failure (RLlib would log and retry it
    without end) and stops the run once the same cause keeps coming back (UnmaskGRPO.note_failures)."""

    env_runner: int
    cause: str
    traceback: str


def peak_memory(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def failure_of(worker_index: int, err: BaseException) -> RunnerFailure:
    text = str(err).strip()
    cause = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
    return RunnerFailure(worker_index, cause, traceback.format_exc())


@dataclass
class RunnerSample:
    """What one `DLLMEnvRunner.sample()` delivers: the trajectories, and beside them (not in them) how the
    runner spent its time and where it stands after the batch (a restarted runner resumes from there)."""

    trajectories: TrajectoryBatch
    busy_s: float  # rolling out, weight pull included
    idle_s: float  # between the previous sample's return and this call
    weight_sync_s: float  # pulling the newest weights from the weight board
    runner_state: dict
    forwards: int = 0  # dLLM forwards the engine really ran for this batch
    forward_rows: int = 0  # rows those forwards computed (group members sharing a sequence count once)
    emulation_overruns: int = 0  # emulated GPU (env.emulate_gpu): forwards whose real compute took longer
    rows: int = 0  # rows in flight (env.batch_size, or the memory plan's)
    peak_memory_bytes: int = 0  # the most GPU memory torch has held in this runner so far (0 on the CPU)


class DLLMEnvRunner(EnvRunner, Checkpointable):
    """Reads the typed `config.dllm` (DLLMSettings: model, task, env, seed), `config.rollout` (RolloutConfig) and
    `config.grpo` (GRPOConfig: the reward and the policy temperature are the learner's, one source for both) of its
    UnmaskGRPOConfig."""

    def __init__(self, *, config, **kwargs):
        super().__init__(config=config, **kwargs)
        self.dllm_settings, self.settings, self.grpo = config.dllm, config.rollout, config.grpo
        if getattr(config, "global_seed", None) is not None:  # .debugging(seed=...), per runner as RLlib's would
            seed_globals(config.global_seed + self.worker_index)
        self.version = -1  # no weights yet; the algorithm pushes version 0 before the first sample
        self.board = None
        self.groups_made = 0  # group counter: with the runner index it makes every group id unique
        self.pass_index, self.cursor = 0, 0
        self.module = self.config.get_rl_module_spec().build()
        self.module.eval()
        # The local runner of a run with remote runners stays empty: the driver never loads the dLLM.
        self.hosts_env = self.worker_index > 0 or self.config.num_env_runners == 0
        self._last_return = time.perf_counter()
        if self.hosts_env:
            self._build_env()

    def _build_env(self) -> None:
        d, s = self.dllm_settings, self.settings
        device = d.env.device
        if d.env.emulate_gpu:  # an emulated GPU (Ray's declared GPUs on a CPU machine): the real model on the CPU
            device = "cpu" if device == "auto" else device
        elif self.config.num_gpus_per_env_runner > 0:
            if not torch.cuda.is_available():
                raise RuntimeError("num_gpus_per_env_runner > 0 but this env runner sees no CUDA device")
            device = "cuda"
        self.dllm = load_env_dllm(d.model, d.env, trust_remote_code=d.trust_remote_code, device=device)
        self.module.to(self.dllm.device)
        seed = d.seed * 1000 + self.worker_index
        self.env = UnmaskingEnv.from_config(self.dllm, d.env, seed=seed, fill_at_budget=s.fill_at_budget)
        self.task = make_task(d.task)
        outputs = self.config.run_outputs
        held = outputs.validate_examples if outputs.validate_every else 0  # validation prompts, never trained on
        self.pool = self.task.examples("train", s.train_pool + held, seed=d.seed)
        self.validation, self.pool = (self.pool[-held:], self.pool[:-held]) if held else ([], self.pool)
        if not self.pool:
            raise ValueError(f"the task has no training examples beyond the {held} held out for validation")
        self.generator = torch.Generator(device=self.dllm.device).manual_seed(seed)
        conditioned = self.module.policy.config.alpha_conditioned  # rollouts give each row its group's alpha
        sampler_cfg = SamplerConfig(name="policy", policy_temperature=self.grpo.policy_temperature,
                                    alpha=self.grpo.alpha if conditioned else None)
        self.sampler = PolicySampler(sampler_cfg, self.generator, policy=self.module.policy,
                                     fallback=self.grpo.fallback, logit_bound=self.grpo.logit_bound)
        self.steering = ExpertSteering.fast_dllm(s.expert.thresholds, s.expert.block_length, s.group_size)
        # rows in flight: env.batch_size, else what the memory plan fits for the pool's longest prompt (a runner on a
        # fraction of a GPU plans with that fraction of its memory)
        encoded = self.dllm.encode_prompts([ex.prompt for ex in self.pool + self.validation], self.task.response_prefix)
        members = s.group_size + len(s.expert.thresholds)
        gpus = self.config.num_gpus_per_env_runner
        self.rows = batch_rows(self.dllm, d.env, max(len(ids) for ids in encoded), s.prompts_per_sample * members,
                               group_size=members, features=self.sampler.features, share=gpus if 0 < gpus < 1 else 1.0)

    # ---- EnvRunner API ---------------------------------------------------------------------------
    def assert_healthy(self) -> None:
        assert not self.hosts_env or self.env is not None, "env runner has no dLLM environment"

    def get_spaces(self) -> dict:
        spaces = (self.config.observation_space, self.config.action_space)
        return {INPUT_ENV_SPACES: spaces, DEFAULT_MODULE_ID: spaces}

    def set_weight_board(self, board) -> None:
        self.board = board

    def forget_weights(self) -> None:
        """After a restore: take whatever version is pushed next, even an older one."""
        self.version = -1

    def sample(self, **kwargs) -> RunnerSample | RunnerFailure:
        """One batch of complete groups, sampled with one policy version, and this call's timings; what went wrong
        instead, if anything did (a CUDA OOM, a verifier that raised)."""
        try:
            return self._sample()
        except Exception as err:  # noqa: BLE001 - every failure goes back to the algorithm, which decides
            return failure_of(self.worker_index, err)

    def _sample(self) -> RunnerSample:
        started = time.perf_counter()
        idle_s = started - self._last_return
        sync_s = self._pull_weights()
        examples = self._next_prompts()
        before = dataclasses.replace(self.env.engine.stats)
        overruns = self._overruns()
        alphas = draw_alphas(self.grpo.alpha_range, len(examples), self.generator) if self.grpo.alpha_range else None
        batch = collect_groups(self.env, self.sampler, self.task, examples, self.settings.group_size, self.grpo,
                               env_runner=self.worker_index, first_group=self.groups_made,
                               policy_version=self.version, batch_rows=self.rows,
                               steering=self.steering, alphas=alphas)
        self.groups_made += len(examples)
        self._last_return = time.perf_counter()
        stats = self.env.engine.stats
        return RunnerSample(batch, busy_s=self._last_return - started, idle_s=idle_s, weight_sync_s=sync_s,
                            runner_state=self.get_state(not_components=COMPONENT_RL_MODULE),
                            forwards=stats.forwards - before.forwards, forward_rows=stats.rows - before.rows,
                            emulation_overruns=self._overruns() - overruns, rows=self.rows,
                            peak_memory_bytes=peak_memory(self.dllm.device))

    def validate(self) -> dict | RunnerFailure:
        """The newest policy on the held-out validation prompts, by evaluation's rule: accuracy, mean NFE and mean
        reward at the run's alpha (an alpha-conditioned policy: averaged over the ends and middle of its range)."""
        try:
            return self._validate()
        except Exception as err:  # noqa: BLE001 - as in sample()
            return failure_of(self.worker_index, err)

    def _validate(self) -> dict:
        self._pull_weights()
        g, L = self.grpo, self.dllm_settings.env.gen_length
        alphas = [g.alpha] if not g.alpha_range else [g.alpha_range[0], (g.alpha_range[0] * g.alpha_range[1]) ** 0.5,
                                                       g.alpha_range[1]]
        scores = []
        for alpha in alphas:
            conditioned = self.module.policy.config.alpha_conditioned
            sampler = PolicySampler(SamplerConfig(name="policy", alpha=alpha if conditioned else None,
                                                  policy_temperature=g.policy_temperature),
                                    torch.Generator(device=self.dllm.device).manual_seed(0), policy=self.module.policy)
            episodes = run_episodes(self.dllm, self.task, self.validation, sampler, self.dllm_settings.env, seed=0)
            correct = torch.tensor([e.correct for e in episodes])
            nfe = torch.tensor([e.generation.nfe for e in episodes])
            scores.append({"reward": float(reward(correct, nfe, L, alpha, g.reward).mean()),
                           "accuracy": float(correct.float().mean()), "nfe": float(nfe.float().mean())})
        return {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}

    def evaluate_final(self, cfg: EvalConfig, alpha: float, alpha_range: list[float]) -> dict:
        """The run's final eval on this runner's dLLM, as it is loaded and where it is (no second copy of the model):
        the result, with `evaluated_on` (node, Ray resources, runner index)."""
        result = final_eval(cfg, alpha, alpha_range, dllm=self.dllm)
        result["evaluated_on"] = {**placement(), "env_runner": self.worker_index}
        return result

    def _overruns(self) -> int:
        emulation = getattr(self.dllm, "emulation", None)
        return emulation.overruns if emulation is not None else 0

    def _pull_weights(self) -> float:
        if self.board is None:
            return 0.0
        start = time.perf_counter()
        state = ray.get(self.board.pull_if_newer.remote(self.version))
        if state is not None:
            self.set_state(state)
        return time.perf_counter() - start

    def _next_prompts(self) -> list:
        """The next prompts of a per-pass shuffle of the pool: the data order is a function of the seed,
        the runner index and the cursor (which the runner's state carries)."""
        out = []
        while len(out) < self.settings.prompts_per_sample:
            order = list(range(len(self.pool)))
            random.Random(f"{self.dllm_settings.seed}/{self.worker_index}/{self.pass_index}").shuffle(order)
            take = order[self.cursor : self.cursor + self.settings.prompts_per_sample - len(out)]
            out += [self.pool[i] for i in take]
            self.cursor += len(take)
            if self.cursor >= len(self.pool):
                self.pass_index, self.cursor = self.pass_index + 1, 0
        return out

    def get_metrics(self) -> dict:
        return {}

    def stop(self) -> None:
        pass

    # ---- Checkpointable ----------------------------------------------------------------------------
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict:
        state = {WEIGHTS_SEQ_NO: self.version, "groups_made": self.groups_made,
                 "pass_index": self.pass_index, "cursor": self.cursor}
        if self._check_component(COMPONENT_RL_MODULE, components, not_components):
            state[COMPONENT_RL_MODULE] = self.module.get_state()
        if self.hosts_env:
            state["generator"] = self.generator.get_state()
            state["env_generator"] = self.env.generator.get_state()
        return state

    def set_state(self, state: dict) -> None:
        if COMPONENT_RL_MODULE in state and state.get(WEIGHTS_SEQ_NO, 0) > self.version:
            weights = state[COMPONENT_RL_MODULE]
            weights = ray.get(weights) if isinstance(weights, ray.ObjectRef) else weights
            self.module.set_state(weights.get(DEFAULT_MODULE_ID, weights))
            self.version = state[WEIGHTS_SEQ_NO]
        for key in ("groups_made", "pass_index", "cursor"):
            if key in state:
                setattr(self, key, state[key])
        if self.hosts_env and "generator" in state:
            self.generator.set_state(state["generator"])
            self.env.generator.set_state(state["env_generator"])

    def get_ctor_args_and_kwargs(self):
        return (), {"config": self.config}
