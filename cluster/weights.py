"""Where the env runners pull the learner's newest weights from (pull-based sync, as IMPALA/APPO do): one small Ray
actor holding the last pushed state. It imports nothing but Ray, so starting it costs no RLlib import (RLlib's own
EnvRunnerStateServer costs a 4-5 s one per run)."""

from __future__ import annotations


class WeightBoard:
    """The newest weights (a state dict whose weights are an ObjectRef, so an unchanged pull moves nothing) and their
    version; create with max_concurrency > 1 so that runners pull at once (a push only rebinds a reference)."""

    def __init__(self):
        self.version, self.state = -1, None

    def push(self, state: dict, version: int) -> None:
        self.version, self.state = version, state

    def pull_if_newer(self, version: int) -> dict | None:
        """The stored state if it is newer than `version`, else None (one round trip, no state moved)."""
        state, newest = self.state, self.version
        return state if newest > version else None
