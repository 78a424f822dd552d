"""Every world vla acts in, by ``env.family``: how an env config becomes an env, and which
scripted expert (if any) drives it. The engine (`vla.rollout`, the CLI) asks here and names no
simulator itself; a family's code is imported only when its name is asked for.

A family is registered with two ``"module:function"`` paths:

    from_config(cfg)                                     -> a gymnasium env in vla's convention
    expert_from_config(cfg, env, **mistakes)             -> an object with ``act(obs)``

``cfg`` is an `EnvConfig` (vla.config): family, task, id, cameras, image_size, robot, ... .
Another family (a simulator of your own) registers the same way before a config names it.

An env that runs several tasks (a task set, as Meta-World's MT10) names the task of its current
episode in ``info[EPISODE_TASK]`` on every reset and step; reports then count episodes per task
(`episode_task`) instead of under the config's one label (`task_label`).
"""

from __future__ import annotations

import importlib

from vla.errors import ConfigError

# family -> (from_config, expert_from_config or None)
_FAMILIES: dict[str, tuple[str, str | None]] = {
    "tabletop": ("envs.tabletop:from_config", "envs.tabletop.experts:expert_from_config"),
    "robosuite": ("envs.robosuite_tasks:from_config", "envs.robosuite_tasks.experts:expert_from_config"),
    "robocasa": ("envs.robocasa_tasks:from_config", None),
    "gym": ("envs.gym_adapter:from_config", None),
    "metaworld": ("envs.metaworld_tasks:from_config", "envs.metaworld_tasks.experts:expert_from_config"),
}
# The info key naming the task an env's current episode runs (envs that run several tasks).
EPISODE_TASK = "task_name"


def register_family(name: str, from_config: str, expert_from_config: str | None = None) -> None:
    """Make ``env.family=<name>`` build envs with ``from_config`` ("module:function")."""
    _FAMILIES[name] = (from_config, expert_from_config)


def families() -> list[str]:
    return sorted(_FAMILIES)


def _resolve(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def make_env(cfg):
    """One environment of the configured family."""
    if cfg.family not in _FAMILIES:
        raise ConfigError(f"unknown env.family {cfg.family!r}; available: {families()}")
    return _resolve(_FAMILIES[cfg.family][0])(cfg)


def make_expert(cfg, env, **mistakes: float):
    """The scripted expert of the configured task, acting in ``env`` (made by `make_env`).
    ``mistakes`` (``mistakes``, ``place_mistakes``, ``align_mistakes``: fractions of episodes)
    make it execute a wrong grasp, release or descent and recover from it (`envs.scripted`)."""
    expert = _FAMILIES.get(cfg.family, (None, None))[1]
    if expert is None:
        raise ConfigError(f"no scripted expert for env.family={cfg.family!r}; collect with "
                          f"collect.agent=<checkpoint> or collect.agent=random")
    return _resolve(expert)(cfg, env, **mistakes)


def task_label(cfg) -> str:
    """What reports call the configured task: its name, or a gym env's id (env.task is unused there)."""
    return cfg.id if cfg.family == "gym" and cfg.id else cfg.task


def episode_task(cfg, info: dict, i: int) -> str:
    """What reports call the task env ``i`` of a vector env ran in the episode that just ended:
    the name it gave in ``info[EPISODE_TASK]`` (gymnasium's vector ``info``: an array per key and
    a ``_<key>`` mask of the envs that set it), else `task_label` of the config."""
    names, given = info.get(EPISODE_TASK), info.get("_" + EPISODE_TASK)
    if names is not None and given is not None and given[i]:
        return str(names[i])
    return task_label(cfg)
