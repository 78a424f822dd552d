"""The errors a user can fix. Each message is one line that names the culprit; the vla CLI prints
it without a traceback and exits with status 2.

This module imports nothing, so every layer (config, data, policies, backbones, envs, the CLI)
raises and catches these without pulling in torch or lerobot: a config error is reported before
any heavy import happens. Faults on the robot side (`RobotError` and its kinds) are here too; the
drivers raise them and the safety layer holds the arm before they reach the user.
"""


class UserError(Exception):
    """Base of every error the user can fix; ``except UserError`` catches them all."""


class ConfigError(UserError, ValueError):
    """A bad configuration: unknown key, wrong type, out-of-range value, bad combination."""


class CheckpointError(UserError, RuntimeError):
    """A missing, corrupt or incompatible checkpoint (config and weights disagree, wrong format)."""


class DatasetError(UserError):
    """A dataset cannot be opened or written (missing, locked, corrupt, non-finite values)."""


class FeatureMismatchError(DatasetError):
    """The dataset lacks a feature the caller needs, or has it with another shape."""


class TrainingError(UserError, RuntimeError):
    """A training run cannot go on for a reason the user can act on (bad data, diverged loss)."""


class EnvError(UserError, ValueError):
    """A bad env setting (unknown task, camera, controller, gym id, observation mapping, ...).
    A ValueError, so plain Python callers catch it as one."""



# Faults on the robot side. The safety layer has left the arm holding when one reaches the CLI,
# which reports it as one line and exits with status 3.
class RobotError(RuntimeError):
    """A robot-side failure the user must act on (driver, middleware, controller)."""


class LinkLost(RobotError):
    """The connection to the robot (middleware, bridge or controller) is gone."""


class NotYet(RobotError):
    """A stream has not delivered its first message yet (only meaningful while connecting)."""


class SafetyStop(RobotError):
    """The safety layer held the arm and ended the run; `reason` is one of the intervention kinds."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


USER_ERRORS = (UserError,)
