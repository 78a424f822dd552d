"""RoboCasa kitchen tasks (``env.family=robocasa``) in the feature convention of RoboCasa's own
LeRobot datasets, so a policy trained on those datasets runs here unchanged.

    from envs.robocasa_tasks import make_env
    env = make_env("PnPCounterToCab")        # needs RoboCasa (below); PickPlaceCounterToCabinet in v1.0

RoboCasa is not on PyPI and cannot be installed in this workspace: it needs robosuite's master
branch and ~10 GB of kitchen assets. Its README's steps (github.com/robocasa/robocasa)::

    git clone https://github.com/ARISE-Initiative/robosuite && cd robosuite && pip install -e . && cd ..
    git clone https://github.com/robocasa/robocasa && cd robocasa && pip install -e .
    python -m robocasa.scripts.setup_macros
    python -m robocasa.scripts.download_kitchen_assets     # ~10 GB

(keep mujoco < 3.10 for robosuite 1.5). Without RoboCasa `make_env` raises an EnvError that says
so in one line (``vla eval/collect env=robocasa`` exit 2 with it); without its assets, another.

One observation (`RoboCasaEnv`, see `layout` for where each number comes from)::

    observation.images.robot0_agentview_left    uint8 (S, S, 3)  upright RGB (RoboCasa: 128 px in its
    observation.images.robot0_agentview_right   uint8 (S, S, 3)  evals; 256 px in the LeRobot datasets)
    observation.images.robot0_eye_in_hand       uint8 (S, S, 3)
    observation.state    float32 (16,)  base pos (3) | base quat xyzw (4) | eef pos in base frame (3)
                                        | eef quat in base frame, xyzw (4) | gripper qpos (2)
    task                 str            ``env.get_ep_meta()["lang"]``, new with every sampled scene

One action, float32 (12,) in [-1, 1], in the datasets' order (not robosuite's)::

    base_motion (4: base x, y, yaw | torso) | control_mode (1: -1 arm, +1 base)
    | eef delta position (3) | eef delta axis-angle (3) | gripper (1: -1 open, +1 close)

`layout.ActionLayout` maps it onto PandaOmron's composite-controller vector (read from the
controller, not assumed). Camera names are RoboCasa's own, unrenamed, because its datasets use
them as feature keys; ``wrist`` is accepted as an alias of robot0_eye_in_hand, but then the key
is ``observation.images.wrist``. ``info["is_success"]`` is the task's ``_check_success()``.
Episodes are reseeded like `envs.robosuite_tasks` (``env.rng`` in place); each reset is a hard
reset that samples a new kitchen layout, style and objects (RoboCasa's own default).

Training on RoboCasa's LeRobot datasets
---------------------------------------
RoboCasa365 (v1.0) ships its demonstrations as LeRobot datasets, one per task and source, in the
hub repo ``nvidia/PhysicalAI-Robotics-Manipulation-Kitchen-Demos`` (maintainers' pointer in
robocasa/robocasa#213) under ``{pretrain,target}/{atomic,composite}/<Task>/<date>/lerobot/``, or
through ``python -m robocasa.scripts.download_datasets --tasks PickPlaceCounterToCabinet --split
target --source human``. That repo is a collection, not one LeRobot repo id: download a task's
``lerobot/`` folder and point ``dataset.root`` at it. Its features (robocasa's
``scripts/dataset_scripts/convert_hdf5_lerobot.py``): the three ``observation.images.<camera>``
videos above (256x256, h264, 20 fps), ``observation.state`` float64 (16,), ``action`` float64 (12,),
``annotation.human.task_description`` / ``task_name`` int64, ``next.reward``, ``next.done``, and
the language in ``task``; plus non-LeRobot ``extras/`` (MuJoCo states, model XML, ep_meta).

They are written in LeRobot's v2.1 layout (``meta/episodes.jsonl``, one parquet per episode);
vla reads v3.0, so convert once (lerobot's script; ``<dir>/lerobot`` becomes v3.0, the original
with its ``extras/`` moves to ``<dir>/lerobot_old``)::

    python -m lerobot.scripts.convert_dataset_v21_to_v30 --repo-id=robocasa/PickPlaceCounterToCabinet \\
        --root=<dir>/lerobot --push-to-hub=false

Then every feature name lines up with this env: same image keys, same 16-d state and 12-d action
in the same order (float64 there, read as float32; 256 px frames there, 128 px here: the backbone
resizes both to ``policy.backbone.image_size``). The one setting to change is the policy's
cameras (its default is ``[agentview, wrist]``)::

    vla train dataset.root=<dir>/lerobot dataset.repo_id=robocasa/PickPlaceCounterToCabinet \\
        'policy.backbone.cameras=[robot0_agentview_left,robot0_agentview_right,robot0_eye_in_hand]'
    vla eval env=robocasa env.task=PickPlaceCounterToCabinet eval.checkpoint=<run>

LeRobot's own RoboCasa wrapper (``lerobot.envs.robocasa``, and datasets made with it) orders the
state eef-first (eef pos, eef quat, base pos, base quat, gripper) and the action as RoboCasa's
HDF5 demos; a policy trained on such a dataset needs its state and action permuted to run here.

Without RoboCasa, the adapter's robot, camera, state and action code runs on a stock robosuite
task with PandaOmron (`make_stock_env`, used by the tests): RoboCasa's cameras are added to the
mobile base, the controller gets RoboCasa's part ordering, the rest is the same class.

Limitations: the kitchen path itself (task classes, ``get_ep_meta``, assets, horizons from
RoboCasa's registry) is written against RoboCasa's source but has not run here. Seeds fix a scene
only as far as RoboCasa samples from ``env.rng``. RoboCasa's benchmark protocols pick scenes and
object splits through kitchen arguments (v0.2 evals: ``obj_instance_split="B"`` and five
``layout_and_style_ids``; v1.0: its pretrain / target splits): pass them as ``env.kwargs``. On
the stock-task path only, a first action in base mode (control_mode > 0) after a reset makes the
arm jump: robosuite's OSC resets its goal in the world frame and base mode adds to it as a
base-frame goal; RoboCasa's kitchens step zero arm-mode actions to settle every reset, which
rebases the goal first. No scripted expert: ``vla collect env=robocasa`` needs
``collect.agent=<checkpoint>`` or ``random``.
"""

from __future__ import annotations

import gymnasium

from envs.robocasa_tasks.install import INSTALL_HINT, kitchen_assets_problem, require_robocasa
from envs.robocasa_tasks.layout import DEFAULT_CAMERAS

__all__ = ["DEFAULT_CAMERAS", "INSTALL_HINT", "kitchen_assets_problem", "make_env", "make_stock_env",
           "require_robocasa"]

def make_env(task: str, robot: str = "PandaOmron", **kwargs) -> gymnasium.Env:
    """A `RoboCasaEnv` for RoboCasa kitchen task ``task`` (keyword arguments as in `RoboCasaEnv`);
    an EnvError with the install command when RoboCasa or its assets are missing."""
    require_robocasa()  # before the env module (and robosuite) load: the cheapest way to say what is missing
    from envs.robocasa_tasks.env import RoboCasaEnv

    return RoboCasaEnv(task, robot=robot, kitchen=True, **kwargs)


def make_stock_env(task: str = "Lift", robot: str = "PandaOmron", **kwargs) -> gymnasium.Env:
    """The adapter on a stock robosuite task (Lift, PickPlaceCan, ...) instead of a kitchen, for
    tests and for checking a policy's plumbing without RoboCasa: same class, cameras, state and
    action layout; the instruction and horizon come from `envs.robosuite_tasks.tasks`."""
    from envs.robocasa_tasks.env import RoboCasaEnv

    return RoboCasaEnv(task, robot=robot, kitchen=False, **kwargs)
