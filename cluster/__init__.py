"""Wiring: the command line, configs, reports, and (later) the RLlib algorithm, Tune sweeps and jobs."""
