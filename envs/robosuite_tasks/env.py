"""robosuite's own tasks behind the gymnasium API, in the feature convention of `vla.features`.

One observation (no batch axis), for a single-arm robot:

    observation.images.<camera>   uint8   (image_size, image_size, 3)   upright RGB
    observation.state             float32 (9 + G,)  robot0_eef_pos (3) | rot6d of robot0_eef_quat (6)
                                                    | robot0_gripper_qpos (G; 2 for the Panda)
    observation.environment_state float32 (E,)      robosuite's ``object-state`` (privileged)
    task                          str               the instruction (`tasks.TASKS`)

The state is built from robosuite's own observables under their robomimic names, so a
policy trained on a converted robomimic dataset (`vla convert`) reads the same numbers here.
Note ``robot0_eef_quat`` is the hand *body*'s orientation (robosuite <= 1.5 and every robomimic
dataset), a fixed rotation away from the grip site's.

One action: the robot's composite-controller action (robosuite's ``action_spec``). With the
default controller of a Panda that is the tabletop convention: delta eef position (3) | delta
axis-angle (3) | gripper (1, -1 open, +1 close), each in [-1, 1], OSC_POSE in the base frame.

Cameras are rendered by the wrapper (not by robosuite's observables): one render per camera per
step, shadows and reflections off unless asked (see `envs.mujoco_render`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from gymnasium import spaces

from envs.mujoco_render import claim_gl_context, cpu_render_settings, render_camera  # isort: skip  (before robosuite)
from envs import stages
from envs.sim_env import SimArmEnv
from envs.robosuite_tasks.tasks import robosuite_camera, robosuite_task
from vla.errors import EnvError
from vla.features import ACTION, ACTION_NAMES, OBS_ENV_STATE, OBS_STATE, STATE_NAMES, TASK, image_key, rot6d

ARM_CONTROLLERS = ("OSC_POSE", "OSC_POSITION", "IK_POSE", "JOINT_POSITION", "JOINT_TORQUE")


def quat_xyzw_to_matrix(quat: np.ndarray) -> np.ndarray:
    """robosuite's (x, y, z, w) quaternions (..., 4) -> rotation matrices (..., 3, 3)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_quat(np.asarray(quat, dtype=np.float64)).as_matrix()


def robosuite_state(raw: dict) -> np.ndarray:
    """``observation.state`` from robosuite's observables (robomimic's names), for one step or
    stacked steps: robot0_eef_pos (..., 3) | rot6d of robot0_eef_quat (..., 6) |
    robot0_gripper_qpos (..., G) when the robot has a gripper. Shared with `vla convert`, so
    converted datasets and these envs agree number for number."""
    parts = [raw["robot0_eef_pos"], rot6d(quat_xyzw_to_matrix(raw["robot0_eef_quat"]))]
    if "robot0_gripper_qpos" in raw:
        parts.append(raw["robot0_gripper_qpos"])
    return np.concatenate(parts, axis=-1).astype(np.float32)


def controller_config(robot: str, controller: str | None) -> dict:
    """robosuite composite-controller config: the robot's default (None), the default with every
    arm running part controller `controller` (``OSC_POSE``, ``JOINT_POSITION``, ...), or a
    composite-controller JSON file (a path ending in .json)."""
    import robosuite
    from robosuite.controllers import load_part_controller_config

    if controller is not None and controller.endswith(".json"):
        return robosuite.load_composite_controller_config(controller=controller, robot=robot)
    config = robosuite.load_composite_controller_config(robot=robot)
    if controller is None:
        return config
    if controller not in ARM_CONTROLLERS:
        raise EnvError(f"unknown arm controller {controller!r}; choose one of {list(ARM_CONTROLLERS)} or a "
                         f"composite-controller .json file")
    for arm in ("right", "left"):
        part = config["body_parts"].get(arm)
        if part is not None:
            new = load_part_controller_config(default_controller=controller)
            new["gripper"] = part.get("gripper", {"type": "GRIP"})
            config["body_parts"][arm] = new
    return config


def eef_feature_names(state_dim: int, action_dim: int) -> dict[str, list[str]]:
    """Names of a robosuite arm's state (eef position, rot6d, its gripper's joints) and, when it
    is 7-d, of its OSC_POSE action (`vla.features.ACTION_NAMES`); the object state stays unnamed."""
    names = {OBS_STATE: STATE_NAMES[:9] + [f"gripper_qpos_{i}" for i in range(state_dim - 9)]}
    if action_dim == len(ACTION_NAMES):
        names[ACTION] = list(ACTION_NAMES)
    return names


class RobosuiteEnv(SimArmEnv):
    """A robosuite single-arm task (`tasks.TASKS`: Lift, Stack, PickPlace*, NutAssembly*, Door,
    Wipe, ToolHang) with a language instruction, behind the gymnasium API.

    Args:
        task: robosuite's env name.
        robot: any robosuite robot with one arm (Panda, Sawyer, IIWA, Jaco, Kinova3, UR5e, ...).
        controller: None (the robot's default), an arm controller name, or a composite JSON path.
        cameras: vla camera names (``wrist`` = ``robot0_eye_in_hand``; others are robosuite's:
            agentview, frontview, birdview, sideview); () renders nothing (fast, for experts).
        image_size: side of the square camera images (pixels).
        shadows: let the lights cast shadows (slow on a CPU renderer).
        control_freq: policy steps per second.
        max_episode_steps: truncate after this many steps; None takes the task's default.
        instruction: replaces the task's instruction.
        terminate_on_success: end the episode (terminated=True) on the first successful step.
        render_mode: "rgb_array" or None.
        **robosuite_kwargs: passed to ``robosuite.make`` (e.g. ``placement_initializer``,
            ``single_object_mode``, ``initialization_noise``, ``camera_names`` is not needed).
    """

    RENDER_CAMERA = "agentview"  # what render() shows when the env observes no camera

    def __init__(self, task: str = "Lift", *, robot: str = "Panda", controller: str | None = None,
                 cameras: tuple[str, ...] = ("agentview", "wrist"), image_size: int = 96, shadows: bool = False,
                 control_freq: int = 20, max_episode_steps: int | None = None, instruction: str | None = None,
                 terminate_on_success: bool = True, render_mode: str | None = "rgb_array", hard_reset: bool = False,
                 **robosuite_kwargs):
        import robosuite

        if robot not in robosuite.ALL_ROBOTS:
            raise EnvError(f"unknown robosuite robot {robot!r}; {self._robots_hint(robosuite)}")
        name, make, default_instruction, horizon = self._task(task)
        self.task_name, self.shadows = name, shadows
        self._episode_settings(instruction=instruction, default_instruction=default_instruction, cameras=cameras,
                               image_size=image_size, max_episode_steps=max_episode_steps or None,
                               default_steps=horizon, terminate_on_success=terminate_on_success,
                               render_mode=render_mode, control_freq=control_freq)
        self._env = self._sim_owner = make(
            robots=robot,
            controller_configs=self._controller_config(robot, controller),
            has_renderer=False,
            has_offscreen_renderer=bool(self.cameras) or render_mode is not None,
            use_camera_obs=False,           # the wrapper renders its cameras itself, once each
            control_freq=control_freq,
            horizon=10**9,
            ignore_done=True,               # the wrapper owns truncation
            hard_reset=hard_reset,          # False: reset reuses the compiled model and render context
            renderer="mujoco",
            **robosuite_kwargs,
        )
        if len(self._env.robots) != 1:
            raise EnvError(f"{name} with {robot} has {len(self._env.robots)} robots; {self._one_arm_hint()}")
        self._check_cameras()
        cpu_render_settings(self._env.sim, shadows)
        self._static_objects: dict | None = None  # privileged_state's static obstacles, found once
        self.observation_space, self.action_space = self._spaces()

    # What a subclass (RoboCasa) changes: which task a name means, the controller, the spaces.
    def _task(self, task: str):
        """(robosuite env name, a factory taking robosuite's keyword arguments, default
        instruction, default horizon) for ``task``."""
        import robosuite

        self.spec_task = robosuite_task(task)
        make = partial(robosuite.make, task, use_object_obs=True)
        return task, make, self.spec_task.instruction, self.spec_task.max_episode_steps

    def _controller_config(self, robot: str, controller: str | None) -> dict:
        return controller_config(robot, controller)

    def _robots_hint(self, robosuite) -> str:
        return f"available: {sorted(robosuite.ALL_ROBOTS)}"

    def _one_arm_hint(self) -> str:
        return "vla's convention is one arm"

    def _spaces(self) -> tuple[spaces.Dict, spaces.Box]:
        raw = self._env.observation_spec()
        low, high = self._env.action_spec
        state_dim = 3 + 6 + len(raw.get("robot0_gripper_qpos", ()))
        observation = self._observation_space(state_dim, len(raw.get("object-state", ())))
        return observation, spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)

    @property
    def feature_names(self) -> dict[str, list[str]]:
        """What the vectors hold, as the recorder writes them into a dataset's features: the
        end-effector state (eef position, rot6d, gripper joints) and, for a 7-d arm action, the
        OSC_POSE deltas of `vla.features.ACTION_NAMES`. The object state is unnamed."""
        return eef_feature_names(self.observation_space[OBS_STATE].shape[0], self.action_space.shape[0])

    # ----------------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Place the objects and the arm anew; the same seed gives the same scene."""
        super().reset(seed=seed)
        if seed is not None:
            # Placement samplers and joint noise all draw from env.rng: reseed it in place.
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self._env.reset()
        self._elapsed_steps = 0
        self._last_obs = self._observation(raw)
        return self._last_obs, self._info()

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """One control step; reward is 1.0 on success, else 0.0."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != self.action_space.shape:
            raise ValueError(f"{self.task_name}: action of shape {action.shape}, expected {self.action_space.shape}")
        action = np.clip(action, self.action_space.low, self.action_space.high)
        claim_gl_context(self._env.sim)
        raw, _, _, _ = self._env.step(self._to_robosuite(action))
        self._elapsed_steps += 1
        info = self._info()
        success = info["is_success"]
        terminated = success and self.terminate_on_success
        truncated = not terminated and self._elapsed_steps >= self.max_episode_steps
        self._last_obs = self._observation(raw)
        return self._last_obs, float(success), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The first camera's latest frame (H, W, 3) uint8, or a `RENDER_CAMERA` frame without cameras."""
        if self.render_mode is None:
            return None
        if self.cameras and self._last_obs is not None:
            return self._last_obs[image_key(self.cameras[0])].copy()
        return render_camera(self._env.sim, self.RENDER_CAMERA, self.image_size)

    def close(self) -> None:
        super().close()
        self._env = None

    # ----------------------------------------------------------------------- privileged
    def is_success(self) -> bool:
        return bool(self._env._check_success())

    def stages(self) -> dict[str, bool] | None:
        """The stages of a pick task on the current state, as the tabletop tasks report them
        (``grasped``, ``lifted`` >= 2 cm off the table, ``over_target`` where the object has a
        target, ``success``); None for tasks without a single object to pick (`STAGED`)."""
        if self.task_name not in STAGED:
            return None
        env, (pick, target) = self._env, STAGED[self.task_name]
        obj = next(o for o in env.model.mujoco_objects if o.name == pick)
        pos = env.sim.data.body_xpos[env.sim.model.body_name2id(obj.root_body)]
        out = {"grasped": bool(env._check_grasp(gripper=env.robots[0].gripper, object_geoms=obj)),
               "lifted": bool(pos[2] - object_half_size(obj)[2] - table_height(env) >= stages.LIFT_HEIGHT)}
        if target == "bin":  # PickPlace: over (or in) the object's own bin, robosuite's own test
            out["over_target"] = not env.not_in_bin(pos, env.object_to_id[pick.lower()])
        elif target is not None:
            below = next(o for o in env.model.mujoco_objects if o.name == target)
            body = env.sim.model.body_name2id(below.root_body)
            below_rot = env.sim.data.body_xmat[body].reshape(3, 3)
            out["over_target"] = stages.over(pos, env.sim.data.body_xpos[body], below_rot, object_half_size(below)[:2])
        out["success"] = self.is_success()
        if target is None:  # Lift: robosuite's success is itself a lift (the cube's centre 4 cm up, its
            # bottom ~1.9 cm), and the episode ends on it: reached a hair under LIFT_HEIGHT, it still lifted
            out["lifted"] = out["lifted"] or out["success"]
        return out

    def _info(self) -> dict:
        reached = self.stages()
        if reached is None:
            return {"is_success": self.is_success()}
        return {"is_success": reached["success"], "stages": reached}

    @property
    def robosuite_env(self):
        """The wrapped robosuite env (for experts, tests and replaying states)."""
        return self._env

    def privileged_state(self) -> dict:
        """Simulator ground truth in the layout `envs.scripted` expects (world frame, m):
        ``base_pos`` (the robot's base), ``eef_pos``, ``eef_rot`` (the grip site's),
        ``gripper_qpos``, ``table_height`` and
        ``objects``: robosuite object name (``cube``, ``cubeA``, ``Can``, ``VisualCan``, ...) ->
        {``pos``, ``rot``, ``half_size``, ``collides``}, plus the static walls an arm can catch
        (PickPlace's bin walls, as ``bin1_wall0`` ...)."""
        env, robot = self._env, self._env.robots[0]
        site = robot.eef_site_id["right"]
        objects = {}
        for obj in env.model.mujoco_objects:
            body = env.sim.model.body_name2id(obj.root_body)
            objects[obj.name] = {
                "pos": env.sim.data.body_xpos[body].copy(),
                "rot": env.sim.data.body_xmat[body].reshape(3, 3).copy(),
                "half_size": object_half_size(obj),
                "collides": getattr(obj, "obj_type", "all") != "visual",
            }
        if self._static_objects is None:  # the bins never move: find their walls once, not every expert step
            self._static_objects = bin_walls(env)
        objects.update(self._static_objects)
        base = env.sim.model.body_name2id(robot.robot_model.root_body)
        return {
            "base_pos": env.sim.data.body_xpos[base].copy(),
            "eef_pos": env.sim.data.site_xpos[site].copy(),
            "eef_rot": env.sim.data.site_xmat[site].reshape(3, 3).copy(),
            "gripper_qpos": env.sim.data.qpos[robot._ref_gripper_joint_pos_indexes["right"]].copy(),
            "table_height": table_height(env),
            "objects": objects,
        }

    # ----------------------------------------------------------------------- internals
    def _check_cameras(self) -> None:
        known = set(self._env.sim.model.camera_names)
        missing = [c for c in self.cameras if robosuite_camera(c) not in known]
        if missing:
            raise EnvError(f"unknown cameras {missing} for {self.task_name}; this scene has "
                             f"{sorted(known)} (and 'wrist' for robot0_eye_in_hand)")

    def _to_robosuite(self, action: np.ndarray) -> np.ndarray:
        """An action of `action_space` -> robosuite's composite-controller vector (the same here)."""
        return action

    def _state(self, raw: dict) -> np.ndarray:
        return robosuite_state(raw)

    def _observation(self, raw: dict) -> dict:
        obs = {image_key(c): render_camera(self._env.sim, robosuite_camera(c), self.image_size) for c in self.cameras}
        obs[OBS_STATE] = self._state(raw)
        if OBS_ENV_STATE in self.observation_space.spaces:
            obs[OBS_ENV_STATE] = np.asarray(raw["object-state"], dtype=np.float32)
        obs[TASK] = self.instruction
        return obs


def object_half_size(obj) -> np.ndarray:
    """Half extents (3,) of a robosuite object's bounding box in its own frame (m): a box's
    own size, else its horizontal radius and half its height."""
    size = getattr(obj, "size", None)
    if size is not None and len(size) == 3:
        return np.asarray(size, dtype=np.float64)
    radius = float(obj.horizontal_radius)
    height = float(obj.top_offset[2] - obj.bottom_offset[2])
    return np.array([radius, radius, height / 2])


def table_height(env) -> float:
    """Height (m) of the surface the task's objects start on."""
    if hasattr(env, "table_offset"):
        return float(env.table_offset[2])
    if hasattr(env, "bin1_pos"):  # PickPlace: the objects start on the floor of bin 1 (a 2 cm slab)
        return float(env.bin1_pos[2]) + BIN_FLOOR_HALF_THICKNESS
    return 0.8


BIN_FLOOR_HALF_THICKNESS = 0.02
# Tasks with one object to pick whose stages `stages` reports: robosuite's object name and its
# target (an object to rest on, its own "bin", or None).
STAGED = {"Lift": ("cube", None), "Stack": ("cubeA", "cubeB"), "PickPlaceCan": ("Can", "bin")}


def bin_walls(env) -> dict:
    """PickPlace's bin walls as static boxes in the privileged-state layout ({} elsewhere)."""
    if not hasattr(env, "bin1_pos"):
        return {}
    model, data, walls = env.sim.model, env.sim.data, {}
    for bin_name in ("bin1", "bin2"):
        body = model.body_name2id(bin_name)
        for g in range(model.ngeom):
            # the collision walls: boxes of the bin body taller than its floor slab
            if model.geom_bodyid[g] != body or model.geom_contype[g] == 0 or model.geom_size[g][2] <= 0.03:
                continue
            walls[f"{bin_name}_wall{len(walls)}"] = {
                "pos": data.geom_xpos[g].copy(), "rot": data.geom_xmat[g].reshape(3, 3).copy(),
                "half_size": model.geom_size[g].copy(), "collides": True,
            }
    return walls
