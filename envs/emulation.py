"""An emulated-GPU dLLM: the real model computes the logits, and each forward then takes, in wall-clock, what a
named GPU would take for that batch (it sleeps for the difference). N env runners on a 2-core machine then pace
like N GPU runners, so the driver, the object store, the weight broadcast and the learner can be measured at
scale without GPUs (`bench/scale_sim.py`). Nothing about the outputs is faked.

The cost of one forward of `rows` sequences of `tokens` tokens:

    seconds = max(floor_ms / 1e3, rows * tokens * token_us / 1e6)

a latency floor (a small batch costs about as much as one row) and a compute-bound regime beyond. Profiles
(`env.emulate_gpu=<name>`) name where their parameters come from. `env.emulate_tokens=n` times every row as n
tokens: the built-in model's short canvases then pace like the workload they stand for (LLaDA-8B on GSM8K at
L = 256 is about 456 tokens a row: a ~200-token prompt and the canvas); a cached forward is charged for the
tokens it feeds, in the same proportion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class GPUProfile:
    floor_ms: float  # one forward of a small batch
    token_us: float  # per token once compute-bound
    source: str

    def seconds(self, rows: int, tokens: int) -> float:
        return max(self.floor_ms / 1e3, rows * tokens * self.token_us / 1e6)


PROFILES: dict[str, GPUProfile] = {
    # LLaDA-8B on an A100 in bf16. Floor: Fast-dLLM's README, LLaDA GSM8K at L = 256 without cache or parallel
    # decoding, 6.73 tokens/s at one token per forward = 149 ms per forward (batch 1). Per token: 2 x 8.0e9 FLOPs
    # at 40% of the A100's 312 dense bf16 TFLOPs (NVIDIA's datasheet) = 128 us.
    "a100-llada8b": GPUProfile(149.0, 128.0, "Fast-dLLM README (149 ms/forward, batch 1) + A100 datasheet at 40% MFU"),
    # The same model on an H200, scaled from the A100 profile by the datasheets (not measured here: no GPU was
    # lent): the floor by memory bandwidth (4.8 / 2.0 TB/s), the per-token cost by dense bf16 compute (989 / 312).
    "h200-llada8b": GPUProfile(62.0, 40.4, "a100-llada8b scaled by the H200/A100 datasheets (bandwidth, compute)"),
}


def profile(name: str) -> GPUProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown env.emulate_gpu {name!r}: choose one of {', '.join(sorted(PROFILES))}")
    return PROFILES[name]


class EmulatedForwards:
    """Wraps a DLLM's three forward methods: real logits, GPU wall-clock. `emulated_s` sums what was modelled."""

    def __init__(self, dllm, gpu: GPUProfile, tokens_per_row: int = 0):
        self.gpu, self.tokens_per_row, self.emulated_s, self.slept_s = gpu, tokens_per_row, 0.0, 0.0
        self.full_width = 0  # the widest sequence fed so far (a full forward)
        self.forwards = self.overruns = 0  # overruns: the real compute alone took longer than the GPU would
        for name in ("logits", "logits_and_cache", "logits_with_cache"):
            setattr(dllm, name, self._timed(getattr(dllm, name)))

    def _timed(self, forward):
        def run(input_ids, attention_mask, *args, **kwargs):
            start = time.perf_counter()
            out = forward(input_ids, attention_mask, *args, **kwargs)
            rows, width = int(input_ids.shape[0]), int(input_ids.shape[1])
            self.full_width = max(self.full_width, width)
            tokens = round(self.tokens_per_row * width / self.full_width) if self.tokens_per_row else width
            target = self.gpu.seconds(rows, tokens)
            rest = target - (time.perf_counter() - start)
            if rest > 0:
                time.sleep(rest)
                self.slept_s += rest
            else:  # this machine is the bottleneck: the emulation runs slower than the GPU it stands for
                self.overruns += 1
            self.emulated_s += target
            self.forwards += 1
            return out

        return run
