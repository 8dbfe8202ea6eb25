"""The unmasking policy, the GRPO loss and its optimisation. Builds on envs/; never imports rollout/."""
