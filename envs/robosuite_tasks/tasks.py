"""robosuite's own single-arm tasks: the instruction and episode length vla gives each one.

robosuite tasks carry no language, so each gets one plain instruction here (what its success
predicate checks, in words). This module imports nothing heavy: listing the tasks must not
start a simulator.
"""

from dataclasses import dataclass

from vla.errors import EnvError

# Camera names as vla's features call them -> robosuite's camera names. Any other name is
# robosuite's own (agentview, frontview, birdview, sideview, ...) and passes through unchanged,
# so ``cameras: [agentview, wrist]`` means the same views here as in the tabletop tasks.
CAMERA_ALIASES = {"wrist": "robot0_eye_in_hand"}


def robosuite_camera(camera: str) -> str:
    """vla camera name -> robosuite camera name (``wrist`` -> ``robot0_eye_in_hand``)."""
    return CAMERA_ALIASES.get(camera, camera)


def vla_camera(robosuite_name: str) -> str:
    """robosuite camera name -> vla camera name (``robot0_eye_in_hand`` -> ``wrist``)."""
    return {v: k for k, v in CAMERA_ALIASES.items()}.get(robosuite_name, robosuite_name)


@dataclass(frozen=True)
class RobosuiteTask:
    """A robosuite environment name with vla's instruction and default episode length (steps
    at 20 Hz; robosuite's own horizon of 1000 is far longer than any demonstration)."""

    name: str
    instruction: str
    max_episode_steps: int


TASKS: dict[str, RobosuiteTask] = {t.name: t for t in [
    RobosuiteTask("Lift", "lift the red cube", 150),
    RobosuiteTask("Stack", "stack the red cube on the green cube", 250),
    RobosuiteTask("PickPlace", "put each object in its bin", 1000),
    RobosuiteTask("PickPlaceSingle", "put the object in its bin", 400),
    RobosuiteTask("PickPlaceMilk", "put the milk carton in its bin", 400),
    RobosuiteTask("PickPlaceBread", "put the bread in its bin", 400),
    RobosuiteTask("PickPlaceCereal", "put the cereal box in its bin", 400),
    RobosuiteTask("PickPlaceCan", "put the can in its bin", 400),
    RobosuiteTask("NutAssembly", "fit each nut onto the peg of its shape", 800),
    RobosuiteTask("NutAssemblySingle", "fit the nut onto the peg of its shape", 400),
    RobosuiteTask("NutAssemblySquare", "fit the square nut onto the square peg", 400),
    RobosuiteTask("NutAssemblyRound", "fit the round nut onto the round peg", 400),
    RobosuiteTask("Door", "open the door", 300),
    RobosuiteTask("Wipe", "wipe the markings off the table", 500),
    RobosuiteTask("ToolHang", "hang the tool on the stand", 700),
]}


def robosuite_task(name: str) -> RobosuiteTask:
    """The task `name` (robosuite's env name); a ValueError names the supported ones."""
    if name not in TASKS:
        raise EnvError(f"unknown robosuite task {name!r}; supported single-arm tasks: {sorted(TASKS)}")
    return TASKS[name]


def instruction_for(env_name: str) -> str | None:
    """vla's instruction for a robosuite env name, None for an env this table does not know."""
    task = TASKS.get(env_name)
    return task.instruction if task else None
