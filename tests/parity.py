"""Numerical parity with the official remote modeling code, run on the user's machine.

Point `UNMASK_LLADA_REMOTE_CODE` / `UNMASK_DREAM_REMOTE_CODE` at a directory holding the released
`modeling_*.py` and `configuration_*.py` (a Hub snapshot of GSAI-ML/LLaDA-8B-Instruct or
Dream-org/Dream-v0-Instruct-7B, or NVlabs/Fast-dLLM's `llada/model`, `dream/model`). The test writes a tiny
official-layout checkpoint, builds the official class from that code directly (its `from_pretrained` path
does not work with transformers 5), loads the same safetensors and compares logits with ours.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def import_package(code_dir: str, name: str):
    """Import a remote-code directory as a package so its relative imports (`.configuration_llada`) work."""
    init = Path(code_dir) / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init if init.exists() else None,
                                                  submodule_search_locations=[str(code_dir)])
    if spec is None:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(code_dir)]
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    if spec.loader is not None:
        spec.loader.exec_module(package)
    return package


def provide_default_rope() -> None:
    """transformers 5 dropped the "default" entry Dream's remote code looks up; put the plain RoPE back."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def default(config, device=None, seq_len=None, **_):
        dim = config.hidden_size // config.num_attention_heads
        exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
        return 1.0 / (config.rope_theta ** exponent), 1.0

    ROPE_INIT_FUNCTIONS.setdefault("default", default)


def load_official(kind: str, code_dir: str, checkpoint: Path) -> torch.nn.Module:
    prefix = f"unmask_parity_{kind}"
    import_package(code_dir, prefix)
    modeling = importlib.import_module(f"{prefix}.modeling_{kind}")
    configuration = importlib.import_module(f"{prefix}.configuration_{kind}")
    fields = json.loads((checkpoint / "config.json").read_text())
    fields = {k: v for k, v in fields.items() if k not in ("auto_map", "architectures", "model_type")}
    if kind == "llada":
        config = configuration.LLaDAConfig(**fields)
        config.use_cache = False  # transformers 5 no longer sets it on every config
        config.init_device = "cpu"
        model = modeling.LLaDAModelLM(config, init_params=False)
    else:
        provide_default_rope()
        config = configuration.DreamConfig(**fields)
        config._attn_implementation = "sdpa"
        model = modeling.DreamModel(config)
    weights = {}
    for file in sorted(checkpoint.glob("model-*.safetensors")):
        weights |= load_file(str(file))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if "rotary" not in m and "inv_freq" not in m]
    if missing or unexpected:
        raise AssertionError(f"official {kind} code disagrees on names: missing {missing}, unexpected {unexpected}")
    return model.eval()


@torch.no_grad()
def official_logits(kind: str, code_dir: str, checkpoint: Path, ids: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Logits of the official code for unpadded `ids` (the batch-size-1 setting of the official evals).
    In bf16 only the parameters are cast, as `from_pretrained(torch_dtype=bf16)` leaves rotary buffers
    in float32."""
    model = load_official(kind, code_dir, Path(checkpoint))
    for param in model.parameters():
        param.data = param.data.to(dtype)
    if kind == "llada":
        return model(input_ids=ids).logits
    return model(ids, "full", None).logits
