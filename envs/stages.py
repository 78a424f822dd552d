"""The stages of a pick-and-place episode, shared by the envs that report them in
``info["stages"]`` (grasped, lifted, over_target, success): an evaluation reports how many
episodes reached each, i.e. where a policy fails, not only how often. Imports nothing heavy."""

import numpy as np

LIFT_HEIGHT = 0.02  # the "lifted" stage: the object's bottom this far above its start surface (m)


def local_offset(pos, frame_pos, frame_rot) -> np.ndarray:
    """`pos` (3,) in the frame of an object at `frame_pos` (3,) with rotation `frame_rot` (3, 3)."""
    return np.asarray(frame_rot).T @ (np.asarray(pos) - np.asarray(frame_pos))


def over(pos, frame_pos, frame_rot, half_xy) -> bool:
    """`pos` lies above the object at `frame_pos`, within `half_xy` (2,) of its centre in that
    object's own x / y: over a cube's top face, or inside a bin's walls."""
    local = local_offset(pos, frame_pos, frame_rot)
    return bool(np.all(np.abs(local[:2]) < half_xy) and local[2] > 0)
