"""Camera images from a robosuite simulation, fast on a CPU renderer and correct with many envs.

Shared by every robosuite-based task family (`envs.tabletop`, `envs.robosuite_tasks`,
`envs.robocasa_tasks`). Import it before robosuite: it sets up headless GL. It imports no
simulator itself and works on the ``sim`` it is handed.
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


def cpu_render_settings(sim, shadows: bool = False, multisamples: int = 0) -> None:
    """Set the render options the compiled model (not the XML) controls.

    On Mesa's CPU renderer three costs dominate a frame, each about halving its time: the
    shadow pass, reflections (a floor reflectance of 0.01 makes MuJoCo draw the scene a
    second time) and multisampling. ``multisamples`` (0 = off) antialiases edges: a small
    object's partly covered pixels then say where it lies within a pixel, which a policy that
    must place a gripper on a 3-pixel cube needs (the tabletop tasks use 4). Call after every
    model compilation (robosuite recompiles on a hard reset).
    """
    model = sim.model._model
    model.light_castshadow[:] = shadows
    model.mat_reflectance[:] = 0.0
    model.vis.quality.offsamples = multisamples
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
