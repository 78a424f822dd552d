"""Camera images from a robosuite simulation, fast on a CPU renderer and correct with many envs.

Shared by every robosuite-based task family (`envs.tabletop`, `envs.robosuite_tasks`,
`envs.robocasa_tasks`); Meta-World (`envs.metaworld_tasks`) uses its GL set-up and
`cpu_model_settings`. Import it before robosuite or MuJoCo's renderer: it sets up headless GL.
It imports no simulator itself and works on the ``sim`` (or model) it is handed.
"""

import logging
import os

import numpy as np

# robosuite picks its GL backend at import time; EGL runs headless on Mesa's CPU renderer.
os.environ.setdefault("MUJOCO_GL", "egl")
# Mesa's llvmpipe renders on worker threads by default. A process forked after they started
# hangs on its first frame, and gymnasium's AsyncVectorEnv forks right after building one env in
# the parent. Rendering on the calling thread is as fast at 96x96 (35 steps/s with two cameras on
# 2 idle cores either way; 33 vs 22 on busy ones). Mesa reads this when the first GL context starts.
os.environ.setdefault("LP_NUM_THREADS", "0")


class _KnownHarmless(logging.Filter):
    """Drops robosuite's start-up notes that say nothing about this setup (~10 lines before any
    output of ours): no private macro file (the defaults are what we use), no robosuite_models /
    mink IK (other robots, GR1's IK), the controller file it loads. Its real warnings still show."""

    PREFIXES = ("No private macro file found", "It is recommended to use a private macro file", "To setup, run:",
                "Could not import robosuite_models", "Could not load the mink-based whole-body IK",
                "Loading controller configuration from")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


# robosuite logs through this logger, configured when robosuite is imported; a filter on the
# logger object survives that (getLogger returns the same object).
logging.getLogger("robosuite_logs").addFilter(_KnownHarmless())


def cpu_model_settings(model, shadows: bool = False, multisamples: int = 0) -> None:
    """Set the render options a compiled ``mujoco.MjModel`` (not the XML) controls.

    On Mesa's CPU renderer three costs dominate a frame, each about halving its time: the
    shadow pass, reflections (a floor reflectance of 0.01 makes MuJoCo draw the scene a
    second time) and multisampling. ``multisamples`` (0 = off) antialiases edges: a small
    object's partly covered pixels then say where it lies within a pixel, which a policy that
    must place a gripper on a 3-pixel cube needs (the tabletop tasks use 4). The multisample
    count is read when render buffers are made: set it before making a renderer.
    """
    model.light_castshadow[:] = shadows
    model.mat_reflectance[:] = 0.0
    model.vis.quality.offsamples = multisamples


def cpu_render_settings(sim, shadows: bool = False, multisamples: int = 0) -> None:
    """`cpu_model_settings` for a robosuite simulation, remaking its render buffers when the
    multisample count changed. Call after every model compilation (robosuite recompiles on a
    hard reset)."""
    cpu_model_settings(sim.model._model, shadows, multisamples)
    context = sim._render_context_offscreen
    if context is not None and context.con.offSamples != multisamples:
        # The multisample count is fixed when the render buffers are made: remake them.
        context.gl_ctx.make_current()
        context.con.free()
        context._set_mujoco_context_and_buffers()


def claim_gl_context(sim) -> None:
    """Make this simulation's GL context current. robosuite renders into whichever context is
    current, i.e. the last one any env in this process created: without this, frames come
    from another env's buffers (and a close frees another env's buffers)."""
    if sim is not None and sim._render_context_offscreen is not None:
        sim._render_context_offscreen.gl_ctx.make_current()


def render_camera(sim, camera: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8, upright, from robosuite camera `camera`: OpenGL reads rows
    bottom-up, so they are flipped."""
    claim_gl_context(sim)
    frame = sim.render(width=size, height=size, camera_name=camera)
    return np.ascontiguousarray(frame[::-1])


class OffscreenRenderer:
    """Square camera images of plain MuJoCo models (``mujoco.MjModel`` / ``MjData``), upright, from
    one headless GL context that outlives the models it draws.

    ``use(model)`` uploads a model's meshes and textures into that context (~0.1 s), replacing the
    previous model's. ``mujoco.Renderer`` makes a GL context per model instead, and a new context
    costs ~0.4 s more and ~100 MB until Mesa has compiled its shaders again: an env that switches
    to another task's model every episode would pay that at every switch.
    """

    def __init__(self, size: int):
        import mujoco
        from mujoco.gl_context import GLContext

        self.size = size
        self._gl = GLContext(size, size)
        self._rect = mujoco.MjrRect(0, 0, size, size)
        self._context = self._model = self._scene = None
        self._option, self._camera = mujoco.MjvOption(), mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED

    def use(self, model) -> None:
        """Draw ``model`` from now on (its render settings, e.g. `cpu_model_settings`, set first)."""
        import mujoco

        self._gl.make_current()
        self._free_model()
        # The offscreen buffer is the model's offwidth x offheight (640 x 480 in many XMLs): just the image.
        model.vis.global_.offwidth = model.vis.global_.offheight = self.size
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50.value)  # no text is drawn
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._context)
        self._scene = mujoco.MjvScene(model, maxgeom=10_000)
        self._model = model

    def render(self, data, camera: int) -> np.ndarray:
        """(size, size, 3) uint8 from camera id ``camera`` of the model in use, in state ``data``."""
        import mujoco

        self._gl.make_current()  # another renderer of this process may have made its own current
        self._camera.fixedcamid = camera
        mujoco.mjv_updateScene(self._model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL.value,
                               self._scene)
        mujoco.mjr_render(self._rect, self._scene, self._context)
        frame = np.empty((self.size, self.size, 3), dtype=np.uint8)
        mujoco.mjr_readPixels(frame, None, self._rect, self._context)
        return frame[::-1]  # OpenGL reads rows bottom-up

    def _free_model(self) -> None:
        if self._context is not None:
            self._context.free()
        self._context = self._model = self._scene = None

    def close(self) -> None:
        if self._gl is None:
            return
        self._gl.make_current()
        self._free_model()
        self._gl.free()
        self._gl = None
