"""Running samplers (heuristics or the learned policy) in dLLM environments; trajectories and evaluation."""
