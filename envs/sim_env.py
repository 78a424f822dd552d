"""What the robosuite-backed envs (tabletop, robosuite's tasks, RoboCasa) share: the episode
settings every one takes, the observation space of vla's convention, and freeing the
simulation's render buffers in its own GL context on close or when the env is dropped."""

from __future__ import annotations

import string

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.mujoco_render import claim_gl_context
from vla.features import OBS_ENV_STATE, OBS_STATE, TASK, image_key



class SimArmEnv(gym.Env):
    """Base of the single-arm MuJoCo envs; a subclass sets its simulation (anything with ``sim``
    and ``close()``) as ``self._sim_owner``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    MAX_INSTRUCTION_LENGTH = 256
    _sim_owner = None

    def _episode_settings(self, *, instruction: str | None, default_instruction: str, cameras, image_size: int,
                          max_episode_steps: int | None, default_steps: int, terminate_on_success: bool,
                          render_mode: str | None, control_freq: int) -> None:
        """The settings of the Args every subclass documents (instruction ... render_mode)."""
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.instruction = instruction or default_instruction
        self.cameras = tuple(cameras)
        self.image_size = image_size
        self.max_episode_steps = default_steps if max_episode_steps is None else max_episode_steps
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": control_freq}
        self._elapsed_steps = 0
        self._last_obs: dict | None = None

    def _observation_space(self, state_dim: int, env_state_dim: int = 0) -> spaces.Dict:
        """Cameras (H, W, 3) uint8, the state, the privileged object state (if any), the instruction."""
        image = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        features = {image_key(c): image for c in self.cameras}
        features[OBS_STATE] = spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)
        if env_state_dim:
            features[OBS_ENV_STATE] = spaces.Box(-np.inf, np.inf, (env_state_dim,), np.float32)
        features[TASK] = spaces.Text(max_length=self.MAX_INSTRUCTION_LENGTH, charset=string.printable)
        return spaces.Dict(features)

    def close(self) -> None:
        owner = self._sim_owner
        if owner is not None and owner.sim is not None:
            claim_gl_context(owner.sim)  # free this env's buffers, not another env's
            owner.close()
        self._sim_owner = None

    def __del__(self):
        # An env dropped without close() must free its buffers in its own context too.
        try:
            self.close()
        except Exception:  # at interpreter exit GL or robosuite may already be torn down
            pass
