"""The ways a run stops early, each with a one-line message naming what to do; the CLIs
print them without a traceback. Here (no JAX import) so that a CLI can catch them cheaply;
ConfigError (config.py) and DataError (data.py) are the other two."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run; the message names it and the fix."""


class RunStopped(RuntimeError):
    """The run stopped before its end; the message says at which step and which checkpoint to
    continue from. step: where it stopped; checkpoint: the last good one's step (or None)."""

    def __init__(self, message: str, step: int, checkpoint: int | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class Diverged(RunStopped):
    """The loss or the gradients became NaN or infinite."""


class Interrupted(RunStopped):
    """Ctrl-C (KeyboardInterrupt) during the training loop."""
