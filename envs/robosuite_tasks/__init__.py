"""robosuite's own single-arm tasks (Lift, Stack, PickPlace*, NutAssembly*, Door, Wipe, ToolHang)
with any robosuite robot, controller and cameras, in the tabletop tasks' conventions.

    from envs.robosuite_tasks import make_env
    from envs.robosuite_tasks.experts import make_expert

    env = make_env("Lift", robot="Panda", cameras=("agentview", "wrist"))   # or gymnasium.make("vla/Lift-v0")
    expert = make_expert("Lift", env)            # scripted: Lift, Stack, PickPlaceCan

Importing this package registers the gymnasium ids but starts no simulator.
"""

import gymnasium

from envs.robosuite_tasks.tasks import TASKS, RobosuiteTask, instruction_for, robosuite_task

__all__ = ["TASKS", "RobosuiteTask", "instruction_for", "make_env", "gym_id"]


def gym_id(task: str) -> str:
    """``Lift`` -> ``vla/Lift-v0``."""
    return f"vla/{task}-v0"


def make_env(task: str, **kwargs) -> gymnasium.Env:
    """A `RobosuiteEnv` for robosuite task `task`; keyword arguments as in `RobosuiteEnv`."""
    robosuite_task(task)  # fail on an unknown task before paying for robosuite's import
    from envs.robosuite_tasks.env import RobosuiteEnv

    return RobosuiteEnv(task, **kwargs)


for _task in TASKS:
    if gym_id(_task) not in gymnasium.registry:
        gymnasium.register(id=gym_id(_task), entry_point="envs.robosuite_tasks.env:RobosuiteEnv",
                           kwargs={"task": _task})
