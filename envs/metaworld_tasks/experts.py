"""Meta-World's own scripted policies (``metaworld.policies``, one per task) as vla experts.

Each is a reactive rule on Meta-World's 39-value observation (hand, gripper, object and goal
positions: privileged state). The expert asks the env which task its episode runs and reads the
observation the env kept from its latest reset or step (`MetaWorldEnv.raw_observation`): the one
``act`` is handed. It has no sub-task phases to label and cannot inject mistakes (vla's wrong
grasps and releases are phases of `envs.scripted`); `python -m envs.check_experts --family
metaworld --task MT10` measures its success per task.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np

from vla.errors import ConfigError

# make_expert's mistake keywords -> the collect settings that set them (for the error message)
MISTAKE_SETTINGS = {"mistakes": "collect.grasp_mistakes", "place_mistakes": "collect.place_mistakes",
                    "align_mistakes": "collect.align_mistakes"}


class MetaWorldExpert:
    """The bundled scripted policy of whichever task the env's current episode runs."""

    phase = None  # Meta-World's policies are single rules without named sub-tasks

    def __init__(self, env: gym.Env):
        from envs.metaworld_tasks.env import MetaWorldEnv

        self.env = env.unwrapped
        if not isinstance(self.env, MetaWorldEnv):
            raise ValueError(f"a Meta-World expert needs a MetaWorldEnv, got {type(self.env).__name__}")
        self._policies: dict[str, object] = {}  # task -> its policy, made once (they hold no state)

    def reset(self) -> None:
        pass  # stateless: the policy of the new episode's task is looked up at each act

    def act(self, obs: dict) -> np.ndarray:
        """The action for the env's latest observation (``obs``), clipped to [-1, 1]."""
        task = self.env.task_name
        if task not in self._policies:
            from metaworld.policies import ENV_POLICY_MAP

            self._policies[task] = ENV_POLICY_MAP[task]()
        with warnings.catch_warnings():
            # The policies' proportional gains saturate on purpose far from a target, and
            # metaworld warns about it at every such step; the action is clipped below, as the env would.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = self._policies[task].get_action(self.env.raw_observation)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


def make_expert(task: str, env: gym.Env, **mistakes: float) -> MetaWorldExpert:
    """Meta-World's scripted expert for ``task`` (one task or a set, as `tasks.resolve_tasks`
    reads it) acting in ``env``, a `MetaWorldEnv` of the same tasks. ``mistakes`` must be zero:
    these policies cannot execute a mistake and recover from it."""
    from envs.metaworld_tasks.tasks import resolve_tasks

    asked = {MISTAKE_SETTINGS.get(k, k): v for k, v in mistakes.items() if v}
    if asked:
        settings = ", ".join(f"{k}={v}" for k, v in asked.items())
        raise ConfigError(f"{settings}: Meta-World's scripted experts cannot inject mistakes; set them to 0 "
                          f"(collect.action_noise perturbs their actions instead)")
    expert = MetaWorldExpert(env)
    if resolve_tasks(task) != expert.env.tasks:
        raise ValueError(f"the {task!r} expert needs an env of the same tasks, got one of {expert.env.tasks}")
    return expert


def expert_from_config(cfg, env: gym.Env, **mistakes: float) -> MetaWorldExpert:
    """`make_expert` for an `EnvConfig` with ``family=metaworld`` (see `envs.registry`)."""
    return make_expert(cfg.task, env, **mistakes)
