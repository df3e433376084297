"""Errors caused by what a user gave, which main.py reports in one line.

* `UserError`: bad input found while running (a file, a checkpoint, a
  dataset, a workdir in use, a loss gone non-finite): exit status 1.
* `ConfigError`: a config value, override or flag that cannot work: exit
  status 2, as for any usage error.

Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad input; the message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
  """A config value or flag that cannot work; the message names it."""


class CheckpointError(UserError, RuntimeError):
  """No usable checkpoint where one was needed, or a save failed; the
  message says what to do."""
