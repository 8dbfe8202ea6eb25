"""Wiring on Ray: the RLlib algorithm and its parts, `unmask train` and `unmask sweep` through Tune, run directories."""
