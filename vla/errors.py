"""The errors a user can fix, reported by the CLI as one line (no traceback)."""

from envs.errors import EnvError
from vla.checkpoint import CheckpointError
from vla.config import ConfigError
from vla.data.source import DatasetError, FeatureMismatchError
from vla.train import TrainingError

# EnvError: a bad env setting (task, camera, robot, controller, gym id or mapping, ...)
USER_ERRORS = (ConfigError, CheckpointError, DatasetError, FeatureMismatchError, TrainingError, EnvError)
