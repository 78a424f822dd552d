"""Scripted experts for the tabletop tasks, built from the phases of `envs.scripted`.

Each expert reads the simulator's privileged state (`TabletopEnv.privileged_state`), so it
also runs with cameras off; `phase` labels the sub-task of every action it takes.
"""

import gymnasium as gym

from envs.scripted import ScriptedExpert, carry_phases, object_pos, pick_phases
from envs.tabletop.tasks import (
    BIN_SIZE, BIN_WALL, CUBE_HALF_SIZE, STACK_Z_TOLERANCE, cube_name, inside_bin, rests_on, task_spec,
)


def cube_pick_phases(colour: str):
    return pick_phases(cube_name(colour), f"the {colour} cube")


def stack_phases(top: str, bottom: str):
    base = cube_name(bottom)
    # Let go with the top cube 4 mm above its resting height: it settles without a bounce.
    drop_height = CUBE_HALF_SIZE[top] + CUBE_HALF_SIZE[bottom] + 0.004

    def stacked(state):  # the success test's geometry; twice its height tolerance while the cube settles
        objects = state["objects"]
        return rests_on(objects[cube_name(top)]["pos"], objects[base]["pos"], objects[base]["rot"], top, bottom,
                        z_tolerance=2 * STACK_Z_TOLERANCE)

    return [
        *cube_pick_phases(top),
        *carry_phases(
            cube_name(top),
            f"the {top} cube",
            f"the {bottom} cube",
            "onto",
            over=lambda state: object_pos(state, base)[:2],
            down=lambda state: object_pos(state, base) + [0.0, 0.0, drop_height],
            placed=stacked,
        ),
    ]


def place_phases(colour: str):
    # Let go with the cube's bottom 1.5 cm above the bin floor (the fingertips stay clear of it).
    centre_above_bin_centre = -BIN_SIZE[2] / 2 + BIN_WALL + CUBE_HALF_SIZE[colour] + 0.015

    def in_bin(state):  # the success test's geometry
        objects = state["objects"]
        return inside_bin(objects[cube_name(colour)]["pos"], objects["bin"]["pos"], objects["bin"]["rot"])

    return [
        *cube_pick_phases(colour),
        *carry_phases(
            cube_name(colour),
            f"the {colour} cube",
            "the bin",
            "into",
            over=lambda state: object_pos(state, "bin")[:2],
            down=lambda state: object_pos(state, "bin") + [0.0, 0.0, centre_above_bin_centre],
            placed=in_bin,
        ),
    ]


def make_expert(task: str, env: gym.Env, **mistakes: float) -> ScriptedExpert:
    """The scripted expert for `task` acting in `env` (a tabletop env of that task); `mistakes`
    are the fractions of episodes in which it executes a wrong grasp, release or descent and
    recovers (`ScriptedExpert`'s keywords)."""
    spec = task_spec(task)
    if env.unwrapped.task_spec.name != task:
        raise ValueError(f"the {task!r} expert needs a {task!r} env, got {env.unwrapped.task_spec.name!r}")
    if spec.kind == "lift":
        phases = cube_pick_phases(spec.pick)
    elif spec.kind == "stack":
        phases = stack_phases(spec.pick, spec.target)
    else:
        phases = place_phases(spec.pick)
    return ScriptedExpert(env, phases, **mistakes)


def expert_from_config(cfg, env: gym.Env, **mistakes: float) -> ScriptedExpert:
    """`make_expert` for the task an `EnvConfig` names (see `envs.registry`)."""
    return make_expert(cfg.task, env, **mistakes)
