"""The frozen dLLM as an environment: model adapters, the unmasking MDP, tasks and heuristic samplers.

Imports nothing from learner/, rollout/ or cluster/.
"""
