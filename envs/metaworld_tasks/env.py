"""Meta-World's Sawyer tasks behind the gymnasium API, in the feature convention of `vla.features`.

One observation (no batch axis):

    observation.images.<camera>   uint8   (image_size, image_size, 3)   upright RGB
    observation.state             float32 (4,)    hand position (3, m, world frame) | gripper
                                                  opening (1: 0 closed .. 1 open)
    observation.environment_state float32 (17,)   up to two objects' position (3) and quaternion
                                                  (4), zeros where a task has fewer | the goal
                                                  position (3)   (privileged; the quaternion in
                                                  the task's own order: Meta-World's tasks mix
                                                  x, y, z, w and MuJoCo's w, x, y, z)
    task                          str             the current task's instruction (`tasks.INSTRUCTIONS`)

Meta-World's own observation (39 values) is hand (3) | gripper (1) | objects (14) | the same 18
values one step earlier | goal (3). State and environment state are its current-step parts (a
vla policy keeps its own history); `MetaWorldEnv.raw_observation` keeps all 39 for Meta-World's
scripted experts, which read them. The state is what LeRobot's Meta-World env calls ``agent_pos``.

One action: 4 values in [-1, 1], Meta-World's: the hand's target moves 1 cm per unit along x, y,
z (a mocap body the hand is welded to) | gripper effort (+1 closes, -1 opens: robosuite's sign).
80 Hz: one action lasts 5 physics steps of 2.5 ms, Meta-World's fixed rate.

**Tasks and seeds.** The env runs one task or cycles through several (`tasks.resolve_tasks`:
``reach-v3``, ``MT10``, ``reach-v3,push-v3``). ``reset(seed=s)`` runs task ``s mod N`` of its N
tasks, so the episodes of consecutive seeds (vla eval's episode k has seed + k) take the tasks in
turn; ``reset()`` without a seed runs the task after the last one. The seed also places the
scene: Meta-World draws a task's object and goal positions (its "rand vec") uniformly from the
task's own ranges, here from a generator seeded with ``s``; Meta-World's benchmarks draw their
50 fixed goals per task from the same ranges. ``info["task_name"]`` names the current task (eval
reports count episodes per task from it).

Only one task's simulation lives at a time: switching tasks builds the next one and uploads it to
the env's one GL context (~0.2 s, against seconds for an episode), so an MT50 env holds one model,
not fifty.

**Cameras** are Meta-World's: ``corner``, ``corner2``, ``corner3``, ``topview``, ``behindGripper``,
``gripperPOV``; ``wrist`` is ``gripperPOV`` (the camera between the fingers). They are rendered
offscreen by MuJoCo (EGL, `envs.mujoco_render`), without shadows unless asked and without
reflections. The three corner cameras are defined with their up axis pointing below the horizon,
so MuJoCo draws them upside down; their images are turned 180 degrees (any camera of a task
whose up axis points down is).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs.mujoco_render import OffscreenRenderer, cpu_model_settings  # isort: skip  (headless GL before MuJoCo)
from envs.metaworld_tasks.tasks import instruction_for, resolve_tasks
from envs.registry import EPISODE_TASK
from envs.sim_env import SimArmEnv
from vla.errors import EnvError
from vla.features import ACTION, OBS_ENV_STATE, OBS_STATE, TASK, image_key

CONTROL_FREQ = 80        # Meta-World's: frame_skip 5 x 2.5 ms
DEFAULT_STEPS = 500      # Meta-World's max_path_length, every task's horizon
CAMERA_ALIASES = {"wrist": "gripperPOV"}
RENDER_CAMERA = "corner"  # what render() shows when the env observes no camera
MULTISAMPLES = 4         # antialiasing: the puck is a few pixels wide at 96 px (see cpu_model_settings)

# Parts of Meta-World's 39-value observation.
HAND_AND_GRIPPER = slice(0, 4)
OBJECTS = slice(4, 18)
GOAL = slice(36, 39)

STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_opening"]
ENV_STATE_NAMES = [f"obj{i}_{part}" for i in range(2) for part in ("x", "y", "z", "q0", "q1", "q2", "q3")] + [
    "goal_x", "goal_y", "goal_z"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]


class MetaWorldEnv(SimArmEnv):
    """One Meta-World task or a set of them, cycled by seed, behind the gymnasium API.

    Args:
        task: a Meta-World task (``reach-v3``), a set (``MT10``, ``MT25``, ``MT50``) or task
            names joined by commas.
        cameras: Meta-World camera names, ``wrist`` for ``gripperPOV``; () renders nothing.
        image_size: side of the square camera images (pixels).
        shadows: let the lights cast shadows (slow on a CPU renderer).
        max_episode_steps: truncate after this many steps; None takes Meta-World's 500.
        instruction: replaces the task's instruction (one task only: each task of a set has its own).
        terminate_on_success: end the episode (terminated=True) on the first successful step.
        render_mode: "rgb_array" or None.
    """

    _sim = _renderer = None  # until the first task is built (close() may run on a half-made env)

    def __init__(self, task: str = "reach-v3", *, cameras: tuple[str, ...] = ("corner", "wrist"),
                 image_size: int = 96, shadows: bool = False, max_episode_steps: int | None = None,
                 instruction: str | None = None, terminate_on_success: bool = True,
                 render_mode: str | None = "rgb_array"):
        self.tasks = resolve_tasks(task)
        if instruction and len(self.tasks) > 1:
            raise EnvError(f"env.instruction replaces one task's instruction, but env.task={task!r} runs "
                           f"{len(self.tasks)} tasks, each with its own: leave env.instruction unset")
        self._episode_settings(instruction=instruction, default_instruction=instruction_for(self.tasks[0]),
                               cameras=cameras, image_size=image_size, max_episode_steps=max_episode_steps or None,
                               default_steps=DEFAULT_STEPS, terminate_on_success=terminate_on_success,
                               render_mode=render_mode, control_freq=CONTROL_FREQ)
        self._instruction_override = instruction
        self.shadows = shadows
        if self.cameras or render_mode is not None:
            self._renderer = OffscreenRenderer(image_size)
        self._task_index = self._next_index = 0
        self.task_name: str = ""
        self.raw_observation: np.ndarray | None = None
        self._build(0)  # the first task now: a bad camera fails here, not at the first reset
        self.observation_space = self._observation_space(len(STATE_NAMES), len(ENV_STATE_NAMES))
        self.action_space = spaces.Box(-1.0, 1.0, (len(ACTION_NAMES),), np.float32)

    @property
    def feature_names(self) -> dict[str, list[str]]:
        """What the vectors hold, as the recorder writes them into a dataset's features."""
        return {OBS_STATE: list(STATE_NAMES), OBS_ENV_STATE: list(ENV_STATE_NAMES), ACTION: list(ACTION_NAMES)}

    @property
    def sim(self):
        """The current task's Meta-World env (a ``SawyerXYZEnv``), for experts and tests."""
        return self._sim

    # ----------------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Run task ``seed mod N`` (or the next task without a seed) in a scene the seed places."""
        super().reset(seed=seed)
        index = self._next_index if seed is None else int(seed) % len(self.tasks)
        if index != self._task_index:
            self._build(index)
        if seed is not None:
            self._sim.seed(int(seed))  # the rand vec below comes from this generator
        self.raw_observation, _ = self._sim.reset()
        self._next_index = (index + 1) % len(self.tasks)
        self._elapsed_steps = 0
        self._last_obs = self._observation()
        return self._last_obs, {"is_success": False, EPISODE_TASK: self.task_name}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """One control step; the reward is Meta-World's own (0 .. 10, shaped per task)."""
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != self.action_space.shape:
            raise ValueError(f"{self.task_name}: action of shape {action.shape}, expected {self.action_space.shape}")
        raw, reward, _, _, sim_info = self._sim.step(np.clip(action, -1.0, 1.0))
        self.raw_observation = raw
        self._elapsed_steps += 1
        success = bool(sim_info["success"])
        terminated = success and self.terminate_on_success
        truncated = not terminated and self._elapsed_steps >= self.max_episode_steps
        self._last_obs = self._observation()
        return self._last_obs, float(reward), terminated, truncated, {"is_success": success,
                                                                       EPISODE_TASK: self.task_name}

    def render(self) -> np.ndarray | None:
        """The first camera's latest frame (H, W, 3) uint8, or a `RENDER_CAMERA` frame without cameras."""
        if self.render_mode is None:
            return None
        if self.cameras and self._last_obs is not None:
            return self._last_obs[image_key(self.cameras[0])].copy()
        return self._render(*self._camera(RENDER_CAMERA))

    def close(self) -> None:
        self._free()
        if self._renderer is not None:
            self._renderer.close()
        self._renderer = None
        super().close()

    # ----------------------------------------------------------------------- internals
    def _build(self, index: int) -> None:
        """Make task ``index``'s simulation the current one (and the renderer's model), freeing the previous."""
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        self._free()
        name = self.tasks[index]
        # The goal-observable class puts the goal into the observation (the experts steer to it).
        # Its constructor draws one scene; seeded, it draws from its own generator and leaves
        # numpy's global one as it was.
        sim = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{name}-goal-observable"](seed=0)
        sim._freeze_rand_vec = False   # draw a new scene at every reset ...
        sim.seeded_rand_vec = True     # ... from sim.np_random, which reset(seed) seeds
        sim.max_path_length = self.max_episode_steps  # this env truncates; Meta-World raises past its own limit
        self._sim, self._task_index, self.task_name = sim, index, name
        self.instruction = self._instruction_override or instruction_for(name)
        self._cameras = [self._camera(c) for c in self.cameras]
        if self._renderer is not None:
            cpu_model_settings(sim.model, self.shadows, MULTISAMPLES)
            self._renderer.use(sim.model)

    def _camera(self, camera: str) -> tuple[int, bool]:
        """(MuJoCo camera id, whether its images come out upside down) of a vla camera name."""
        model, data = self._sim.model, self._sim.data
        known = [model.camera(i).name for i in range(model.ncam)]
        name = CAMERA_ALIASES.get(camera, camera)
        if name not in known:
            raise EnvError(f"unknown camera {camera!r} for Meta-World's {self.task_name}; its cameras are "
                           f"{known} (and 'wrist' for gripperPOV)")
        cam = model.camera(name).id
        # Meta-World's cameras keep their orientation in the world (fixed, or following the hand
        # without turning), so the constructor's forward pass tells it once and for all.
        up_points_down = data.cam_xmat[cam].reshape(3, 3)[2, 1] < 0
        return cam, bool(up_points_down)

    def _render(self, cam: int, upside_down: bool) -> np.ndarray:
        frame = self._renderer.render(self._sim.data, cam)
        return np.ascontiguousarray(frame[::-1, ::-1] if upside_down else frame)

    def _observation(self) -> dict:
        raw = self.raw_observation
        obs = {image_key(c): self._render(*cam) for c, cam in zip(self.cameras, self._cameras)}
        obs[OBS_STATE] = raw[HAND_AND_GRIPPER].astype(np.float32)
        obs[OBS_ENV_STATE] = np.concatenate([raw[OBJECTS], raw[GOAL]]).astype(np.float32)
        obs[TASK] = self.instruction
        return obs

    def _free(self) -> None:
        """Drop the current task's simulation (the renderer lets go of its model at the next `use`)."""
        if self._sim is not None:
            self._sim.close()
        self._sim = None
