"""Replaying recorded MuJoCo states in a robosuite env, for `vla.data.convert`.

    replayer = Replayer("Lift", env_kwargs, cameras=["agentview", "wrist"], image_size=96, offscreen=True)
    replayer.load_scene(model_xml, "demo_0", state_size)   # once per demo
    obs = replayer.observe(states[t])                     # vla.features keys, images upright

Like robomimic's dataset_states_to_obs: the env is built from the file's env kwargs, a demo's
scene is reloaded from its ``model_file`` XML, and each step sets the flattened state and runs
``forward`` (no physics step), so the observation is exactly that of the recorded state. Frames
are rendered at the wanted size with the render settings of vla's robosuite envs
(`envs.mujoco_render`: no shadows, no reflections), so they look like what a policy sees there.
"""

from __future__ import annotations

import numpy as np

from envs.mujoco_render import claim_gl_context, cpu_render_settings, render_camera  # isort: skip  (before robosuite)
from envs.robosuite_tasks.env import robosuite_state
from envs.robosuite_tasks.tasks import robosuite_camera, vla_camera
from vla.errors import DatasetError
from vla.features import OBS_ENV_STATE, OBS_STATE, image_key

# robosuite.make kwargs the file may carry that the replay sets itself (or that name another machine's GPU).
REPLAY_OWNED = {
    "env_name", "has_renderer", "has_offscreen_renderer", "use_camera_obs", "use_object_obs", "ignore_done",
    "camera_names", "camera_heights", "camera_widths", "camera_depths", "camera_segmentations",
    "render_camera", "render_gpu_device_id", "renderer", "renderer_config",
}


class Replayer:
    """A robosuite env that shows recorded states.

    Args:
        env_name, env_kwargs: robosuite.make arguments as the file stores them (robomimic's
            ``env_args["env_kwargs"]`` or robosuite's ``env_info``); part controller configs of
            robosuite <= 1.4 are converted to robosuite 1.5's composite form.
        cameras: vla camera names to render (``wrist`` = ``robot0_eye_in_hand``).
        image_size: side of the square frames.
    """

    def __init__(self, env_name: str, env_kwargs: dict, cameras: list[str], image_size: int):
        import robosuite
        from robosuite.controllers.composite.composite_controller_factory import (
            is_part_controller_config, refactor_composite_controller_config
        )

        kwargs = {k: v for k, v in env_kwargs.items() if k not in REPLAY_OWNED}
        kwargs.update(has_renderer=False, has_offscreen_renderer=True, use_camera_obs=False,
                      use_object_obs=True, ignore_done=True)
        controller = kwargs.get("controller_configs")
        if isinstance(controller, dict) and is_part_controller_config(controller):
            robots = kwargs.get("robots", "Panda")
            robot = robots if isinstance(robots, str) else robots[0]
            kwargs["controller_configs"] = refactor_composite_controller_config(controller, robot, ["right"])
        try:
            self.env = robosuite.make(env_name, **kwargs)
        except Exception as e:  # unknown env, kwargs of another robosuite version, ...
            raise DatasetError(f"cannot build the robosuite env {env_name!r} from the file's env args "
                               f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        self.env_name = env_name
        self.image_size = image_size
        self.cameras = {camera: robosuite_camera(camera) for camera in cameras}
        self._scene: str | None = None
        cpu_render_settings(self.env.sim)
        have = self.env.sim.model.camera_names
        unknown = [c for c, name in self.cameras.items() if name not in have]
        if unknown:
            self.close()
            raise DatasetError(f"unknown camera(s) {unknown}: the {env_name} scene has "
                               f"{sorted(vla_camera(n) for n in have)}")

    def load_scene(self, model_xml: str | None, demo: str, state_size: int) -> None:
        """Load a demo's scene from its XML (robosuite's ``model_file``); None resets the env's own."""
        if model_xml is None or model_xml != self._scene:
            try:
                if model_xml is None:
                    self.env.reset()
                else:
                    self.env.reset_from_xml_string(self.env.edit_model_xml(model_xml))
                    self.env.sim.reset()
            except Exception as e:
                raise DatasetError(f"{demo}: cannot load its model_file into {self.env_name} "
                                   f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
            self._scene = model_xml
            cpu_render_settings(self.env.sim)  # a new model after every load
        have = self.env.sim.get_state().flatten().size
        if state_size != have:
            raise DatasetError(f"{demo}: its states have {state_size} values per step, the replayed {self.env_name} "
                               f"scene {have} (recorded with another scene or robosuite version?)")

    def observe(self, state: np.ndarray) -> dict:
        """The observation of one flattened MuJoCo state: the robot state (from robosuite's
        observables under their robomimic names, as `envs.robosuite_tasks.env` builds it), the
        object state and the camera frames (upright)."""
        sim = self.env.sim
        sim.set_state_from_flattened(state)
        sim.forward()
        obs = self.env._get_observations(force_update=True)
        frame = {OBS_STATE: robosuite_state(obs)}
        if "object-state" in obs:
            frame[OBS_ENV_STATE] = obs["object-state"]
        for camera, name in self.cameras.items():
            frame[image_key(camera)] = render_camera(sim, name, self.image_size)
        return frame

    def close(self) -> None:
        claim_gl_context(self.env.sim)  # free this env's buffers, not another env's
        self.env.close()
