"""Scripted experts for robosuite's Lift, Stack and PickPlaceCan, from `envs.scripted` phases.

They read the simulator's privileged state (`RobosuiteEnv.privileged_state`) and speak the
default Panda controller's action (OSC_POSE delta | gripper), so they need that controller;
any robot with it and a parallel gripper works. `python -m envs.robosuite_tasks.check_experts`
measures their success rates.
"""

import gymnasium as gym
import numpy as np

from envs.scripted import ScriptedExpert, carry_phases, object_pos, pick_phases
from vla.errors import EnvError

# Let go of a stacked cube this far above its resting height: it settles without a bounce.
STACK_DROP = 0.004
# Let go of the can with its bottom this far above the target bin's floor.
BIN_DROP = 0.02
GRASP_ABOVE_CENTRE = 0.02
# A PickPlace compartment (a quarter of bin 2) is about 20 x 25 cm; keep the object 5 cm from its walls.
COMPARTMENT_HALF_SIZE = (0.1, 0.125)
COMPARTMENT_MARGIN = 0.05


def lift_phases():
    return pick_phases("cube", "the red cube")


def stack_phases(state: dict):
    drop = state["objects"]["cubeA"]["half_size"][2] + state["objects"]["cubeB"]["half_size"][2] + STACK_DROP
    return [
        *pick_phases("cubeA", "the red cube"),
        *carry_phases("cubeA", "the red cube", "the green cube", "onto",
                      over=lambda s: object_pos(s, "cubeB")[:2],
                      down=lambda s: object_pos(s, "cubeB") + [0.0, 0.0, drop]),
    ]


def pick_place_phases(state: dict, name: str, noun: str):
    """Pick object `name` out of bin 1 and put it down in its compartment of bin 2.

    The compartment is the quarter of bin 2 around the object's marker (``Visual<name>``).
    The far compartments lie at the edge of the Panda's reach with the gripper pointing down,
    so the object goes to the compartment's corner nearest the robot, `COMPARTMENT_MARGIN`
    inside its walls, instead of onto the marker itself.
    """
    marker = f"Visual{name}"
    floor = state["table_height"]  # both bins' floors are at the same height
    height = state["objects"][name]["half_size"][2] + BIN_DROP
    half = np.array(COMPARTMENT_HALF_SIZE) - COMPARTMENT_MARGIN

    def drop_xy(s):
        centre = object_pos(s, marker)[:2]
        return centre + np.clip(s["base_pos"][:2] - centre, -half, half)

    return [
        # grasp above the centre: the hand then clears bin 1's 8 cm walls
        *pick_phases(name, noun, grasp_above_centre=GRASP_ABOVE_CENTRE),
        *carry_phases(name, noun, "its bin", "into", over=drop_xy, down=lambda s: [*drop_xy(s), floor + height],
                      grasp_above_centre=GRASP_ABOVE_CENTRE),
    ]


EXPERTS = {
    "Lift": lambda state: lift_phases(),
    "Stack": stack_phases,
    "PickPlaceCan": lambda state: pick_place_phases(state, "Can", "the can"),
}


class RobosuiteExpert(ScriptedExpert):
    """A `ScriptedExpert` whose phases depend on the episode's scene (object sizes vary)."""

    def __init__(self, env: gym.Env, build, **mistakes: float):
        self._build = build
        super().__init__(env, phases=[], **mistakes)  # reset() builds them

    def reset(self) -> None:
        self.phases = self._build(self.env.privileged_state())
        super().reset()


def make_expert(task: str, env: gym.Env, **mistakes: float) -> ScriptedExpert:
    """The scripted expert for robosuite task `task` acting in `env` (a `RobosuiteEnv` of it);
    `mistakes` are the fractions of episodes in which it executes a wrong grasp, release or
    descent and recovers (`ScriptedExpert`'s keywords)."""
    if task not in EXPERTS:
        raise EnvError(f"no scripted expert for robosuite task {task!r}; experts exist for {sorted(EXPERTS)}")
    if env.unwrapped.task_name != task:
        raise ValueError(f"the {task!r} expert needs a {task!r} env, got {env.unwrapped.task_name!r}")
    return RobosuiteExpert(env, EXPERTS[task], **mistakes)


def expert_from_config(cfg, env: gym.Env, **mistakes: float) -> ScriptedExpert:
    """`make_expert` for the task an `EnvConfig` names (see `envs.registry`)."""
    return make_expert(cfg.task, env, **mistakes)
