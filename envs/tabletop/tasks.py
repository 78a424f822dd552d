"""The tabletop tasks: what each one asks, which objects play which role, how long it may run.

Every task shares one scene (a red, a green and a blue cube and a bin on the table), so the
instruction is the only thing that tells a policy what to do. This module imports nothing
heavy: listing the tasks must not start a simulator.
"""

from dataclasses import dataclass

import numpy as np

from envs.stages import local_offset, over
from vla.errors import EnvError

# RGBA of each cube colour; saturated so the colours stay distinct at 96x96 pixels.
CUBE_RGBA = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.7, 0.15, 1.0),
    "blue": (0.1, 0.25, 0.85, 1.0),
}
# Half edge length (m). The green cube is larger so a red cube can rest on it with margin.
CUBE_HALF_SIZE = {"red": 0.02, "green": 0.025, "blue": 0.02}
# Bin outer size (x, y, z) in m and wall thickness: 12 cm of inner floor around a 4 cm cube.
# The 4 cm rim stays below the Panda hand, whose underside is ~5 cm above the table while the
# fingers hold a cube there: a grasp right next to the bin cannot catch the rim.
BIN_SIZE = (0.14, 0.14, 0.04)
BIN_WALL = 0.01

# Success thresholds, shared by the predicates and documented in `TaskSpec.success`.
LIFT_HEIGHT = 0.10  # the cube's bottom face must be this far above the table top (m)
STACK_Z_TOLERANCE = 0.01  # |height of red above green - (sum of half sizes)| (m)


@dataclass(frozen=True)
class TaskSpec:
    """One language-conditioned task.

    kind: "lift" | "stack" | "place"; pick: the colour of the cube to move; target: the
    colour of the cube to stack on, "bin", or None for lift. `success` states the predicate
    in words; `TabletopScene.check_success` implements it.
    """

    name: str
    kind: str
    instruction: str
    pick: str
    target: str | None
    success: str
    max_episode_steps: int


TASKS: dict[str, TaskSpec] = {
    "lift": TaskSpec(
        name="lift",
        kind="lift",
        instruction="lift the red cube",
        pick="red",
        target=None,
        success=f"the red cube's bottom face is more than {LIFT_HEIGHT} m above the table top",
        max_episode_steps=150,
    ),
    "stack": TaskSpec(
        name="stack",
        kind="stack",
        instruction="stack the red cube on the green cube",
        pick="red",
        target="green",
        success=(
            "the red cube touches the green cube, its centre lies over the green cube's top face, "
            f"its height above the green cube is the sum of both half sizes within {STACK_Z_TOLERANCE} m, "
            "and the gripper has let go of it (both finger pads no longer touch it)"
        ),
        max_episode_steps=250,
    ),
    "place": TaskSpec(
        name="place",
        kind="place",
        instruction="put the blue cube in the bin",
        pick="blue",
        target="bin",
        success=(
            "the blue cube's centre lies inside the bin's inner walls, below the rim, "
            "and the gripper has let go of it"
        ),
        max_episode_steps=250,
    ),
}


def task_spec(task: str) -> TaskSpec:
    """The spec of `task`; a ValueError names the valid tasks."""
    if task not in TASKS:
        raise EnvError(f"unknown tabletop task {task!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[task]


def cube_name(colour: str) -> str:
    """``red`` -> ``red_cube``: the object's name in the scene and in privileged state."""
    return f"{colour}_cube"


def rests_on(top_pos, bottom_pos, bottom_rot, top: str, bottom: str, z_tolerance: float = STACK_Z_TOLERANCE) -> bool:
    """The geometry of a stack: the `top` cube's centre over the `bottom` cube's top face (in
    that cube's frame) at resting height within `z_tolerance` m. Positions (3,), rotation (3, 3)."""
    height = local_offset(top_pos, bottom_pos, bottom_rot)[2]
    return over(top_pos, bottom_pos, bottom_rot, CUBE_HALF_SIZE[bottom]) and bool(
        abs(height - (CUBE_HALF_SIZE[top] + CUBE_HALF_SIZE[bottom])) < z_tolerance)


BIN_INNER_HALF = np.array(BIN_SIZE[:2]) / 2 - BIN_WALL  # half the bin's inner floor (x, y) (m)


def inside_bin(pos, bin_pos, bin_rot) -> bool:
    """The geometry of a placement: a centre inside the bin's inner walls, below its rim."""
    local = local_offset(pos, bin_pos, bin_rot)
    return bool(np.all(np.abs(local[:2]) < BIN_INNER_HALF) and local[2] < BIN_SIZE[2] / 2)
