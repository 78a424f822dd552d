"""The one error type of `envs`: a setting the user can fix (unknown task, camera, controller,
env id, observation mapping, ...). A ValueError, so plain Python callers catch it as one; the
vla CLI prints its message as one line and exits with status 2."""


class EnvError(ValueError):
    """A bad env setting; the message is one line that names the culprit."""
