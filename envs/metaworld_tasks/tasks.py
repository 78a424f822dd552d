"""Meta-World's task names, its official task sets and an instruction for every task.

Importing this module starts no simulator: the instructions are data, and the task lists are
read from ``metaworld.env_dict`` only when a name is resolved (importing metaworld loads MuJoCo
and every task class, half a second).
"""

from __future__ import annotations

from vla.errors import EnvError

# One short imperative sentence per Meta-World v3 task: what the scene asks for, in the words a
# person would use (the objects as they look in the cameras: the puck is a red cylinder, the
# plate a black disc, the net a hockey goal). tests/test_metaworld.py checks the keys against
# metaworld's own list, so a task added upstream cannot go without one.
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the nut onto the peg",
    "basketball-v3": "dunk the ball into the hoop",
    "bin-picking-v3": "move the green cube from the red bin into the blue bin",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button down from above",
    "button-press-topdown-wall-v3": "reach over the wall and press the button down from above",
    "button-press-v3": "push the button in from the front",
    "button-press-wall-v3": "reach past the wall and push the button in",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out from under the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "lift the nut off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning its lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning its lock",
    "hand-insert-v3": "push the block into the hole",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-open-v3": "turn the faucet handle to open it",
    "faucet-close-v3": "turn the faucet handle to close it",
    "hammer-v3": "hammer the nail into the box",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck, lift it over the wall and put it at the goal",
    "pick-out-of-hole-v3": "pick the puck up out of the hole",
    "pick-place-v3": "pick up the puck and put it at the goal",
    "plate-slide-v3": "slide the plate into the net",
    "plate-slide-side-v3": "slide the plate sideways into the net",
    "plate-slide-back-v3": "slide the plate back out of the net",
    "plate-slide-back-side-v3": "slide the plate sideways out of the net",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "pull the peg out of the box sideways",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "push the thermos to the goal with the stick",
    "stick-pull-v3": "pull the thermos to the goal with the stick",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck back to the goal",
    "reach-v3": "move the gripper to the goal",
    "reach-wall-v3": "reach over the wall to the goal",
    "shelf-place-v3": "put the block on the shelf",
    "sweep-into-v3": "sweep the block into the hole",
    "sweep-v3": "sweep the block off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

# Several tasks in one env.task: a separator a Meta-World task name never contains.
LIST_SEPARATOR = ","


def _env_dict():
    """metaworld's task registry; importing it imports MuJoCo, which picks its GL backend then."""
    import envs.mujoco_render  # noqa: F401  (headless EGL, before MuJoCo loads)
    from metaworld import env_dict

    return env_dict


def task_sets() -> dict[str, list[str]]:
    """Meta-World's official multi-task sets, in its own order: MT10, MT25 and MT50 (every task)."""
    env_dict = _env_dict()
    return {"MT10": list(env_dict.MT10_V3), "MT25": list(env_dict.MT25_V3), "MT50": list(env_dict.MT50_V3)}


def all_tasks() -> list[str]:
    """Every Meta-World v3 task name, in metaworld's order."""
    return list(_env_dict().ALL_V3_ENVIRONMENTS)


def resolve_tasks(task: str) -> list[str]:
    """``env.task`` -> the tasks an env cycles through: one name (``reach-v3``), a set (``MT10``,
    ``MT25``, ``MT50``) or names joined by commas (``reach-v3,push-v3``). Raises `EnvError`
    naming what exists."""
    sets = task_sets()
    if not isinstance(task, str) or not task.strip():
        raise EnvError(f"env.task must name a Meta-World task or a set ({', '.join(sets)}), got {task!r}")
    if task in sets:
        return sets[task]
    names = [t.strip() for t in task.split(LIST_SEPARATOR)]
    known = all_tasks()
    unknown = [t for t in names if t not in known]
    if unknown:
        raise EnvError(f"unknown Meta-World task {', '.join(map(repr, unknown))}; a task is one of {known}, "
                       f"a set one of {list(sets)}, or tasks joined by commas")
    if len(set(names)) != len(names):
        raise EnvError(f"env.task {task!r} names a task twice: each task of a set is run equally often")
    return names


def instruction_for(task: str) -> str:
    """The instruction of one Meta-World task name."""
    return INSTRUCTIONS[task]
