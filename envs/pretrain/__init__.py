"""Making a dLLM of your own: `unmask pretrain` (train.py), its configs (config.py) and a fresh model (model.py)."""
