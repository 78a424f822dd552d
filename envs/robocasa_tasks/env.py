"""`RoboCasaEnv`: a RoboCasa kitchen (or, for tests, a stock robosuite task) with PandaOmron,
in the feature layout of RoboCasa's LeRobot datasets (see the package docstring and `layout`).

It shares `RobosuiteEnv`'s stepping, rendering, camera check, success test, privileged state and
closing, and builds its own robosuite env, observation and action spaces: the state and action
follow RoboCasa's datasets (`_state`, `_to_robosuite`), not the tabletop convention.
"""

from __future__ import annotations

import string
import xml.etree.ElementTree as ET

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.mujoco_render import claim_gl_context, cpu_render_settings  # isort: skip  (before robosuite)
from envs.robocasa_tasks.install import ASSETS_HINT, require_robocasa
from envs.robocasa_tasks.layout import (
    DEFAULT_CAMERAS, ROBOCASA_BODY_PART_ORDERING, STATE_DIM, ActionLayout, state_from_observables
)
from envs.robosuite_tasks.env import MAX_INSTRUCTION_LENGTH, RobosuiteEnv, controller_config
from envs.robosuite_tasks.tasks import robosuite_task
from vla.errors import EnvError
from vla.features import OBS_STATE, TASK, image_key

# RoboCasa v0.x task names -> their RoboCasa365 (v1.0) names. Both registries were read
# (robocasa/utils/dataset_registry.py, v0.1 and v1.0 versions); either name works here.
TASK_ALIASES = {
    "PnPCounterToCab": "PickPlaceCounterToCabinet",
    "PnPCabToCounter": "PickPlaceCabinetToCounter",
    "PnPCounterToSink": "PickPlaceCounterToSink",
    "PnPSinkToCounter": "PickPlaceSinkToCounter",
    "PnPCounterToMicrowave": "PickPlaceCounterToMicrowave",
    "PnPMicrowaveToCounter": "PickPlaceMicrowaveToCounter",
    "PnPCounterToStove": "PickPlaceCounterToStove",
    "PnPStoveToCounter": "PickPlaceStoveToCounter",
}
TASK_ALIASES.update({v: k for k, v in list(TASK_ALIASES.items())})

DEFAULT_HORIZON = 500  # RoboCasa's horizon for its pick-and-place tasks (v0.1 and v1.0 dataset registries)

# RoboCasa's fixed PandaOmron cameras on the mobile base (robocasa/utils/camera_utils.py,
# CAM_CONFIGS["DEFAULT"]): camera -> (parent body, pos, MJCF quat w x y z, fovy or None).
# Kitchens add them themselves; the stock-task path adds them the same way (edit_model_xml).
# robot0_eye_in_hand needs nothing: robosuite's Panda hand camera has RoboCasa's pose.
ROBOCASA_CAMERAS = {
    "robot0_agentview_left": ("mobilebase0_support", (-0.5, 0.35, 1.05),
                              (0.55623853, 0.29935253, -0.37678665, -0.6775092), "60"),
    "robot0_agentview_right": ("mobilebase0_support", (-0.5, -0.35, 1.05),
                               (0.6775091886520386, 0.3767866790294647, -0.2993525564670563, -0.55623859167099),
                               "60"),
    "robot0_agentview_center": ("mobilebase0_support", (-0.6, 0.0, 1.15),
                                (0.636945903301239, 0.3325185477733612, -0.3199238181114197, -0.6175596117973328),
                                None),
}


def add_robocasa_cameras(xml: str) -> str:
    """Add `ROBOCASA_CAMERAS` that a model lacks to their parent bodies (bodies it lacks are skipped)."""
    root = ET.fromstring(xml)
    existing = {cam.get("name") for cam in root.iter("camera")}
    bodies = {body.get("name"): body for body in root.iter("body")}
    for name, (parent, pos, quat, fovy) in ROBOCASA_CAMERAS.items():
        if name in existing or parent not in bodies:
            continue
        attrs = {"name": name, "mode": "fixed", "pos": " ".join(map(str, pos)), "quat": " ".join(map(str, quat))}
        if fovy is not None:
            attrs["fovy"] = fovy
        ET.SubElement(bodies[parent], "camera", attrs)
    return ET.tostring(root, encoding="unicode")


_CAMERA_CLASSES: dict[type, type] = {}


def with_robocasa_cameras(env_class: type) -> type:
    """A subclass of a stock robosuite env class whose model gets RoboCasa's robot cameras
    (robosuite runs ``edit_model_xml`` on every model it compiles, as RoboCasa's Kitchen does)."""
    if env_class not in _CAMERA_CLASSES:
        from robosuite.environments.base import REGISTERED_ENVS

        def edit_model_xml(self, xml_str):
            return add_robocasa_cameras(env_class.edit_model_xml(self, xml_str))

        name = f"{env_class.__name__}WithRoboCasaCameras"
        sub = type(name, (env_class,), {"edit_model_xml": edit_model_xml})
        REGISTERED_ENVS.pop(name, None)  # robosuite's metaclass registers every env class; not this one
        _CAMERA_CLASSES[env_class] = sub
    return _CAMERA_CLASSES[env_class]


def resolve_kitchen_task(task: str, registered) -> str:
    """``task`` if robosuite knows it (RoboCasa registers its kitchens on import), else its v0.x /
    v1.0 alias; an EnvError naming close matches otherwise."""
    if task in registered:
        return task
    if TASK_ALIASES.get(task) in registered:
        return TASK_ALIASES[task]
    import difflib

    close = difflib.get_close_matches(task, list(registered), n=5, cutoff=0.5)
    raise EnvError(f"unknown RoboCasa task {task!r}" + (f"; close: {close}" if close else "")
                   + " (names: robocasa/utils/dataset_registry.py)")


def kitchen_horizon(task: str) -> int:
    """RoboCasa's own horizon for ``task`` from its dataset registry (v1.0: ATOMIC/COMPOSITE_TASK_DATASETS;
    v0.x: SINGLE/MULTI_STAGE_TASK_DATASETS), else `DEFAULT_HORIZON`."""
    try:
        import robocasa.utils.dataset_registry as registry
    except Exception:  # an older or newer robocasa without it: fall back
        return DEFAULT_HORIZON
    for table in ("ATOMIC_TASK_DATASETS", "COMPOSITE_TASK_DATASETS", "SINGLE_STAGE_TASK_DATASETS",
                  "MULTI_STAGE_TASK_DATASETS"):
        for name in (task, TASK_ALIASES.get(task)):
            entry = getattr(registry, table, {}).get(name)
            if isinstance(entry, dict) and entry.get("horizon"):
                return int(entry["horizon"])
    return DEFAULT_HORIZON


def robocasa_controller_config(robot: str, controller: str | None) -> dict:
    """The robot's composite controller (or ``controller``, as `controller_config` reads it) with
    RoboCasa's body-part ordering when the robot has PandaOmron's parts, as RoboCasa's Kitchen sets it."""
    config = controller_config(robot, controller)
    if set(config.get("body_parts", {})) == {"right", "base", "torso"}:
        specific = config.setdefault("composite_controller_specific_configs", {})
        specific["body_part_ordering"] = list(ROBOCASA_BODY_PART_ORDERING)
    return config


class RoboCasaEnv(RobosuiteEnv):
    """A RoboCasa kitchen task behind the gymnasium API, in RoboCasa's dataset layout.

    Args:
        task: a RoboCasa task (``PnPCounterToCab`` / ``PickPlaceCounterToCabinet``, ...); with
            ``kitchen=False``, a stock robosuite task from `envs.robosuite_tasks.tasks` instead.
        robot: PandaOmron (the layout needs its arm, gripper, base and torso).
        controller: None (PandaOmron's default: OSC_POSE arm, base velocity, torso position) or
            as `envs.robosuite_tasks.env.controller_config` reads it (the arm must stay 6-d).
        cameras: robosuite camera names (``wrist`` = robot0_eye_in_hand).
        image_size: side of the square images (RoboCasa evaluates at 128).
        shadows: let the lights cast shadows (slow on a CPU renderer).
        control_freq: policy steps per second (RoboCasa: 20).
        max_episode_steps: truncate after this many steps; None: RoboCasa's horizon for the task.
        instruction: replaces the per-episode instruction from ``get_ep_meta()["lang"]``.
        terminate_on_success: end the episode on the first successful step.
        render_mode: "rgb_array" or None.
        kitchen: True for RoboCasa (needs it installed, see `envs.robocasa_tasks.make_env`);
            False for the stock-task path (`make_stock_env`, tests).
        hard_reset: recompile the scene on every reset; None = ``kitchen`` (a kitchen samples a
            new layout, style and objects only on a hard reset, RoboCasa's default).
        **robosuite_kwargs: passed to the env class (kitchens: ``layout_ids``, ``style_ids``,
            ``obj_instance_split``, ``obj_registries``, ``randomize_cameras``, ...).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    RENDER_CAMERA = "robot0_agentview_center"

    def __init__(self, task: str = "PnPCounterToCab", *, robot: str = "PandaOmron", controller: str | None = None,
                 cameras: tuple[str, ...] = DEFAULT_CAMERAS, image_size: int = 128, shadows: bool = False,
                 control_freq: int = 20, max_episode_steps: int | None = None, instruction: str | None = None,
                 terminate_on_success: bool = True, render_mode: str | None = "rgb_array", kitchen: bool = True,
                 hard_reset: bool | None = None, **robosuite_kwargs):
        if kitchen:
            require_robocasa()  # registers the kitchens with robosuite; an EnvError with the fix if missing
        import robosuite
        from robosuite.environments.base import REGISTERED_ENVS

        if robot not in robosuite.ALL_ROBOTS:
            raise EnvError(f"unknown robosuite robot {robot!r}; RoboCasa's layout is PandaOmron's")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if kitchen:
            name = resolve_kitchen_task(task, REGISTERED_ENVS)
            env_class, default_instruction, horizon = REGISTERED_ENVS[name], "", kitchen_horizon(name)
            if "Kitchen" not in {c.__name__ for c in env_class.__mro__}:
                raise EnvError(f"{name} is a stock robosuite task, not a RoboCasa kitchen: use env.family=robosuite")
        else:
            spec = robosuite_task(task)
            name, default_instruction, horizon = spec.name, spec.instruction, spec.max_episode_steps
            env_class = with_robocasa_cameras(REGISTERED_ENVS[name])
        self.task_name = name
        self.kitchen = kitchen
        self.cameras = tuple(cameras)
        self.image_size = image_size
        self.shadows = shadows
        self.max_episode_steps = max_episode_steps or horizon
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": control_freq}
        self._instruction_override = instruction
        self._default_instruction = default_instruction
        self.instruction = instruction or default_instruction
        try:
            self._env = env_class(
                robots=robot,
                controller_configs=robocasa_controller_config(robot, controller),
                has_renderer=False,
                has_offscreen_renderer=bool(self.cameras) or render_mode is not None,
                use_camera_obs=False,            # the wrapper renders its cameras itself, once each
                control_freq=control_freq,
                horizon=10**9,
                ignore_done=True,                # the wrapper owns truncation
                hard_reset=kitchen if hard_reset is None else hard_reset,
                renderer="mujoco",
                **robosuite_kwargs,
            )
        except FileNotFoundError as e:  # RoboCasa with a missing asset (robocasa/robocasa#184)
            if "models/assets" in str(e):
                raise EnvError(f"a RoboCasa asset is missing ({e.filename or e}); {ASSETS_HINT}") from None
            raise
        except ValueError as e:  # no object of a sampled category in the installed registries
            if "probabilities contain NaN" in str(e):
                raise EnvError(f"RoboCasa found no object files for a sampled category ({e}); download the object "
                               f"registries with download_kitchen_assets or set env.kwargs.obj_registries") from None
            raise
        self._elapsed_steps = 0
        self._last_obs: dict | None = None
        self._static_objects: dict | None = None
        if len(self._env.robots) != 1:
            raise EnvError(f"{name} with {robot} has {len(self._env.robots)} robots; RoboCasa's layout is one "
                           f"PandaOmron")
        self._check_cameras()
        cpu_render_settings(self._env.sim, shadows)
        self.layout = ActionLayout.from_controller(self._env.robots[0].composite_controller)

        image_space = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        features = {image_key(c): image_space for c in self.cameras}
        features[OBS_STATE] = spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)
        features[TASK] = spaces.Text(max_length=MAX_INSTRUCTION_LENGTH, charset=string.printable)
        self.observation_space = spaces.Dict(features)
        low, high = (self.layout.to_dataset(bound).astype(np.float32) for bound in self._env.action_spec)
        self.action_space = spaces.Box(low, high, dtype=np.float32)

    # ----------------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """A new scene (a kitchen: layout, style, objects); the same seed gives the same scene."""
        gym.Env.reset(self, seed=seed)
        if seed is not None:
            # Layout, object and placement samplers all draw from env.rng: reseed it in place.
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self._env.unset_ep_meta()  # else a kitchen rebuilds the last episode's scene (as robocasa's wrappers do)
        claim_gl_context(self._env.sim)  # a hard reset frees this env's render buffers, not another env's
        raw = self._env.reset()
        if self._env.hard_reset:
            cpu_render_settings(self._env.sim, self.shadows)  # a new model: reapply the render options
        lang = self._env.get_ep_meta().get("lang") if self.kitchen else None
        self.instruction = self._instruction_override or lang or self._default_instruction
        self._elapsed_steps = 0
        self._last_obs = self._observation(raw)
        return self._last_obs, {"is_success": self.is_success()}

    # ----------------------------------------------------------------------- internals
    def _to_robosuite(self, action: np.ndarray) -> np.ndarray:
        return self.layout.to_robosuite(action)  # the datasets' order -> the controller's

    def _state(self, raw: dict) -> np.ndarray:
        return state_from_observables(raw)
