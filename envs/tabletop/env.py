"""The gymnasium face of the tabletop tasks, in the feature convention of `vla.features`.

One observation (no batch axis):

    observation.images.<camera>   uint8   (image_size, image_size, 3)   upright RGB
    observation.state             float32 (11,)   eef_pos (3) | eef_rot6d (6) | gripper_qpos (2)
    observation.environment_state float32 (20,)   per object: pos (3) | cos 4yaw | sin 4yaw
                                                  (ENV_STATE_NAMES; privileged, never on a robot)
    task                          str             the instruction, e.g. "lift the red cube"

One action: float32 (7,) in [-1, 1] = delta eef position (3) | delta eef axis-angle (3) |
gripper (1, -1 open, +1 close), executed by robosuite's OSC_POSE controller at 20 Hz (an action
of 1 asks for 5 cm or 0.5 rad in one step, in the robot base frame).

Vectorise with ``gymnasium.vector.AsyncVectorEnv(..., shared_memory=False)``: gymnasium cannot
put the Text instruction in shared memory (with shared_memory=True it silently reads back as
"000..."), while pickled observations carry it as a tuple of strings.
"""

import string

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.mujoco_render import claim_gl_context, render_camera
from envs.scripted import yaw_of
from envs.tabletop.scene import CONTROL_FREQ, TABLE_TOP, TabletopScene
from envs.tabletop.tasks import BIN_SIZE, CUBE_HALF_SIZE, cube_name, task_spec
from vla.errors import EnvError
from vla.features import (
    ENV_STATE_NAMES, OBS_ENV_STATE, OBS_STATE, STATE_NAMES, TABLETOP_OBJECTS, TASK, image_key, rot6d
)

# Our camera names (the feature keys) -> robosuite's camera names.
CAMERAS = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
ACTION_DIM = 7
HALF_SIZES = {**{cube_name(c): np.full(3, h) for c, h in CUBE_HALF_SIZE.items()}, "bin": np.array(BIN_SIZE) / 2}
MAX_INSTRUCTION_LENGTH = 128


class TabletopEnv(gym.Env):
    """A language-conditioned Panda task (see `envs.tabletop.TASKS`) behind the gymnasium API.

    Args:
        task: a key of `TASKS` ("lift", "stack", "place").
        image_size: side of the square camera images (pixels).
        cameras: subset of `CAMERAS` to observe; () renders nothing (fast, for scripted experts).
        shadows: let the light cast shadows (slow on a CPU renderer).
        max_episode_steps: truncate after this many steps; None takes the task's default.
        terminate_on_success: end the episode (terminated=True) on the first successful step.
        render_mode: "rgb_array" or None.
        render_size: side of the frame `render()` returns; None returns the agentview
            observation image itself (no extra render).
        instruction: replaces the task's instruction (e.g. a paraphrase); the success
            predicate stays the task's.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    def __init__(
        self,
        task: str = "lift",
        *,
        image_size: int = 96,
        cameras: tuple[str, ...] = ("agentview", "wrist"),
        shadows: bool = False,
        max_episode_steps: int | None = None,
        terminate_on_success: bool = True,
        render_mode: str | None = "rgb_array",
        render_size: int | None = None,
        instruction: str | None = None,
    ):
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise EnvError(f"unknown cameras {unknown}; valid cameras: {sorted(CAMERAS)}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.task_spec = task_spec(task)
        self.instruction = instruction or self.task_spec.instruction
        self.image_size = image_size
        self.cameras = tuple(cameras)
        default_steps = self.task_spec.max_episode_steps
        self.max_episode_steps = default_steps if max_episode_steps is None else max_episode_steps
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.render_size = render_size
        self._scene = TabletopScene(
            self.task_spec, offscreen=bool(self.cameras) or render_mode is not None, shadows=shadows
        )
        self._elapsed_steps = 0
        self._last_obs: dict | None = None

        image_space = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(
            {
                **{image_key(camera): image_space for camera in self.cameras},
                OBS_STATE: spaces.Box(-np.inf, np.inf, (len(STATE_NAMES),), np.float32),
                OBS_ENV_STATE: spaces.Box(-np.inf, np.inf, (len(ENV_STATE_NAMES),), np.float32),
                TASK: spaces.Text(max_length=MAX_INSTRUCTION_LENGTH, charset=string.printable),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Place the objects and the arm anew; the same seed gives the same scene."""
        super().reset(seed=seed)
        if seed is not None:
            self._scene.reseed(seed)
        self._scene.reset()
        self._elapsed_steps = 0
        self._last_obs = self._observation()
        stages = self._scene.stages()
        return self._last_obs, {"is_success": stages["success"], "stages": stages}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Apply one (7,) action for 1/20 s; reward is 1.0 on success, else 0.0."""
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        self._scene.step(action)
        self._elapsed_steps += 1
        stages = self._scene.stages()  # info["stages"]: how far the task got (TabletopScene.stages)
        success = stages["success"]
        terminated = success and self.terminate_on_success
        truncated = not terminated and self._elapsed_steps >= self.max_episode_steps
        self._last_obs = self._observation()
        return self._last_obs, float(success), terminated, truncated, {"is_success": success, "stages": stages}

    def render(self) -> np.ndarray | None:
        """The agentview frame (H, W, 3) uint8: the latest observation's unless `render_size` is set."""
        if self.render_mode is None:
            return None
        if self.render_size is None and "agentview" in self.cameras and self._last_obs is not None:
            return self._last_obs[image_key("agentview")].copy()
        return self._render_camera("agentview", self.render_size or self.image_size)

    def close(self) -> None:
        claim_gl_context(self._scene.sim)  # free this env's buffers, not another env's
        self._scene.close()

    def __del__(self):
        # An env dropped without close() must free its buffers in its own context too.
        try:
            self.close()
        except Exception:  # at interpreter exit GL or robosuite may already be torn down
            pass

    def privileged_state(self) -> dict:
        """Simulator ground truth for scripted experts; never part of the policy observation.

        Returns ``eef_pos`` (3,), ``eef_rot`` (3, 3), ``gripper_qpos`` (2,), ``table_height``
        (float) and ``objects``: name (``red_cube``, ``green_cube``, ``blue_cube``, ``bin``) ->
        {``pos`` (3,), ``rot`` (3, 3), ``half_size`` (3,)}. Positions in m, world frame; the
        layout `envs.scripted` expects.
        """
        eef_pos, eef_rot = self._scene.eef_pose()
        objects = {}
        for name in self._scene.body_ids:
            pos, rot = self._scene.object_pose(name)
            objects[name] = {"pos": pos, "rot": rot, "half_size": HALF_SIZES[name]}
        return {
            "eef_pos": eef_pos,
            "eef_rot": eef_rot,
            "gripper_qpos": self._scene.gripper_qpos(),
            "table_height": float(TABLE_TOP[2]),
            "objects": objects,
        }

    def is_success(self) -> bool:
        """The task's success predicate on the current simulator state."""
        return self._scene.check_success()

    @property
    def scene(self) -> TabletopScene:
        """The underlying robosuite env (for tests and set-ups that move objects directly)."""
        return self._scene

    def _observation(self) -> dict:
        obs = {image_key(camera): self._render_camera(camera, self.image_size) for camera in self.cameras}
        eef_pos, eef_rot = self._scene.eef_pose()
        state = np.concatenate([eef_pos, rot6d(eef_rot), self._scene.gripper_qpos()])
        obs[OBS_STATE] = state.astype(np.float32)
        obs[OBS_ENV_STATE] = self._environment_state()
        obs[TASK] = self.instruction
        return obs

    def _environment_state(self) -> np.ndarray:
        parts = []
        for name in TABLETOP_OBJECTS:
            pos, rot = self._scene.object_pose(name)
            yaw = 4.0 * yaw_of(rot)
            parts.append(np.concatenate([pos, [np.cos(yaw), np.sin(yaw)]]))
        return np.concatenate(parts).astype(np.float32)

    def _render_camera(self, camera: str, size: int) -> np.ndarray:
        return render_camera(self._scene.sim, CAMERAS[camera], size)
