"""Language-conditioned tabletop tasks on robosuite's Panda, and their scripted experts.

    from envs.tabletop import TASKS, make_env
    from envs.tabletop.experts import make_expert

    env = make_env("stack")                      # or gymnasium.make("vla/TabletopStack-v0")
    expert = make_expert("stack", env)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(expert.act(obs))

Importing this package registers the gymnasium ids but starts no simulator: robosuite loads
on the first `make_env`.
"""

import gymnasium

from envs.tabletop.tasks import TASKS, TaskSpec, task_spec

__all__ = ["TASKS", "TaskSpec", "from_config", "make_env", "gym_id"]


def gym_id(task: str) -> str:
    """``stack`` -> ``vla/TabletopStack-v0``."""
    return f"vla/Tabletop{task.capitalize()}-v0"


def make_env(task: str, **kwargs) -> gymnasium.Env:
    """A `TabletopEnv` for `task`; keyword arguments as in `TabletopEnv` (image_size, cameras, ...)."""
    task_spec(task)  # fail on an unknown task before paying for robosuite's import
    from envs.tabletop.env import TabletopEnv

    return TabletopEnv(task, **kwargs)


def from_config(cfg) -> gymnasium.Env:
    """The env an `EnvConfig` with ``family=tabletop`` describes (see `envs.registry`)."""
    return make_env(cfg.task, image_size=cfg.image_size, cameras=tuple(cfg.cameras), shadows=cfg.shadows,
                    max_episode_steps=cfg.max_episode_steps, instruction=cfg.instruction)

for _task in TASKS:
    if gym_id(_task) not in gymnasium.registry:
        gymnasium.register(id=gym_id(_task), entry_point="envs.tabletop.env:TabletopEnv", kwargs={"task": _task})
