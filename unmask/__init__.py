"""unmask: learned unmasking policies for masked diffusion language models, trained with GRPO on Ray.

The public Python API is this module's names (documented in docs/reference/api.md); the layers live in
`unmask.envs` (the dLLM MDP), `unmask.learner` (policy, GRPO), `unmask.rollout` (runners, evaluation, dumps),
`unmask.cluster` (the RLlib algorithm, Tune) and `unmask.cli`. Names load on first use, so `import unmask` and
reading a config import neither torch nor Ray.
"""

from __future__ import annotations

__version__ = "0.2.0"

from pathlib import Path as _Path

# In a source checkout the layers are the folders beside this one (envs/, learner/, ...): import them from there,
# so that a copy of the checkout (e.g. `ray job submit --working-dir .`) runs its own code. An installed wheel
# holds them inside this package (pyproject.toml's package-dir), and nothing is added.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "envs").is_dir() and (_checkout / "envs" / "mdp.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - a package's own __path__
