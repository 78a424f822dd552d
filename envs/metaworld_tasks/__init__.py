"""Meta-World's 50 Sawyer tasks (``env.family=metaworld``): one task, or a set (MT10, MT25, MT50,
or names joined by commas) whose tasks the episodes take in turn by seed, each with a language
instruction, and Meta-World's own scripted expert for every task.

    from envs.metaworld_tasks import make_env
    from envs.metaworld_tasks.experts import make_expert

    env = make_env("MT10", cameras=("corner", "wrist"))   # reset(seed=s) runs task s mod 10
    expert = make_expert("MT10", env)                     # the bundled policy of the current task

Importing this package starts no simulator and does not import metaworld.
"""

import gymnasium

from envs.metaworld_tasks.tasks import INSTRUCTIONS, instruction_for, resolve_tasks, task_sets
from vla.errors import EnvError

__all__ = ["INSTRUCTIONS", "instruction_for", "resolve_tasks", "task_sets", "make_env", "from_config"]

ROBOT = "Sawyer"
CONTROL_FREQ = 80  # Meta-World's fixed rate (env.CONTROL_FREQ; repeated so a config error needs no MuJoCo)
ENV_KWARGS = ("terminate_on_success", "render_mode")  # what env.kwargs may set


def make_env(task: str, **kwargs) -> gymnasium.Env:
    """A `MetaWorldEnv` for ``task``; keyword arguments as in `MetaWorldEnv`."""
    resolve_tasks(task)  # fail on an unknown task before paying for MuJoCo's and metaworld's import
    from envs.metaworld_tasks.env import MetaWorldEnv

    return MetaWorldEnv(task, **kwargs)


def from_config(cfg) -> gymnasium.Env:
    """The env an `EnvConfig` with ``family=metaworld`` describes (see `envs.registry`)."""
    if cfg.robot != ROBOT:
        raise EnvError(f"Meta-World has one robot, the {ROBOT}, not env.robot={cfg.robot!r}: set env.robot={ROBOT} "
                       f"(env=metaworld does)")
    if cfg.controller is not None:
        raise EnvError(f"Meta-World moves the hand by mocap deltas and has no controllers to choose: "
                       f"env.controller must be null, got {cfg.controller!r}")
    if cfg.control_freq != CONTROL_FREQ:
        raise EnvError(f"Meta-World steps at {CONTROL_FREQ} Hz (5 physics steps of 2.5 ms per action), not "
                       f"env.control_freq={cfg.control_freq}: set env.control_freq={CONTROL_FREQ} (env=metaworld does)")
    unknown = sorted(set(cfg.kwargs) - set(ENV_KWARGS))
    if unknown:
        raise EnvError(f"unknown env.kwargs {unknown} for Meta-World; it takes {list(ENV_KWARGS)}")
    return make_env(cfg.task, cameras=tuple(cfg.cameras), image_size=cfg.image_size, shadows=cfg.shadows,
                    max_episode_steps=cfg.max_episode_steps, instruction=cfg.instruction, **cfg.kwargs)
