"""RoboCasa's LeRobot feature layouts, and the mapping between their action order and robosuite's.

numpy only: no simulator is imported here (tests and data tools use it without robosuite).

Where the layouts come from (robocasa/robocasa, read for this module):

- ``robocasa/models/assets/groot_dataset_assets/PandaOmron_modality.json`` (copied into every
  dataset as ``meta/modality.json``) names the slices of ``observation.state`` and ``action``.
- ``robocasa/utils/lerobot_utils.py`` fills them: ``LEROBOT_STATE_TO_HDF5_STATE`` says which
  robosuite observable each state slice is, ``ACTION_KEY_ORDERING_HDF5`` where each action field
  sits in the HDF5 demos' action (= the env's action vector when recorded), and
  ``reorder_hdf5_action`` / ``reorder_lerobot_action`` permute one into the other.
- ``robocasa/environments/kitchen/kitchen.py`` gives PandaOmron's composite controller the
  ``body_part_ordering`` right, right_gripper, base, torso; ``robocasa/wrappers/gym_wrapper.py``
  (``PandaOmronKeyConverter.unmap_action``) sends ``base_motion[0:3]`` to the base and
  ``base_motion[3]`` to the torso, the control mode to the last entry (``base_mode``).

observation.state (16,) -- float64 in the datasets, float32 here:

    [0:3]   base_position                    robot0_base_pos          world frame (m)
    [3:7]   base_rotation                    robot0_base_quat         (x, y, z, w)
    [7:10]  end_effector_position_relative   robot0_base_to_eef_pos   grip site in the base frame
    [10:14] end_effector_rotation_relative   robot0_base_to_eef_quat  hand *body* in the base frame, (x, y, z, w)
    [14:16] gripper_qpos                     robot0_gripper_qpos

action (12,), in the datasets' order (this is the order `RoboCasaEnv` takes):

    [0:4]   base_motion            base x, y, yaw velocity (3) | torso height delta (1)
    [4:5]   control_mode           -1 arm mode, +1 base mode (robosuite: > 0 is base mode)
    [5:8]   end_effector_position  OSC delta position, base frame
    [8:11]  end_effector_rotation  OSC delta axis-angle, base frame
    [11:12] gripper_close          -1 open, +1 close

RoboCasa's HDF5 demos (and robosuite under RoboCasa's body-part ordering) store the same fields as
end_effector_position | end_effector_rotation | gripper_close | base_motion | control_mode.
`ActionLayout` does not assume either order: it reads where each part sits from the composite
controller's ``_action_split_indexes``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vla.errors import EnvError

# the cameras RoboCasa's datasets record (two over the shoulders, one in the hand)
DEFAULT_CAMERAS = ("robot0_agentview_left", "robot0_agentview_right", "robot0_eye_in_hand")

# observation.state: (dataset field, robosuite observable, width), in dataset order
STATE_LAYOUT: tuple[tuple[str, str, int], ...] = (
    ("base_position", "robot0_base_pos", 3),
    ("base_rotation", "robot0_base_quat", 4),
    ("end_effector_position_relative", "robot0_base_to_eef_pos", 3),
    ("end_effector_rotation_relative", "robot0_base_to_eef_quat", 4),
    ("gripper_qpos", "robot0_gripper_qpos", 2),
)
STATE_DIM = sum(width for _, _, width in STATE_LAYOUT)

# action: (field, width) in the LeRobot datasets' order (meta/modality.json) ...
DATASET_ACTION_LAYOUT: tuple[tuple[str, int], ...] = (
    ("base_motion", 4),
    ("control_mode", 1),
    ("end_effector_position", 3),
    ("end_effector_rotation", 3),
    ("gripper_close", 1),
)
# ... and in RoboCasa's HDF5 demos (lerobot_utils.ACTION_KEY_ORDERING_HDF5)
HDF5_ACTION_LAYOUT: tuple[tuple[str, int], ...] = (
    ("end_effector_position", 3),
    ("end_effector_rotation", 3),
    ("gripper_close", 1),
    ("base_motion", 4),
    ("control_mode", 1),
)
ACTION_DIM = sum(width for _, width in DATASET_ACTION_LAYOUT)

# The composite-controller part each action field drives: field -> [(part, start, stop) within
# the part's slice]. BASE_MODE is HybridMobileBase's extra last entry (it has no part).
BASE_MODE = "base_mode"
FIELD_PARTS: dict[str, list[tuple[str, int, int]]] = {
    "end_effector_position": [("right", 0, 3)],
    "end_effector_rotation": [("right", 3, 6)],
    "gripper_close": [("right_gripper", 0, 1)],
    "base_motion": [("base", 0, 3), ("torso", 0, 1)],
    "control_mode": [(BASE_MODE, 0, 1)],
}
PART_WIDTHS = {"right": 6, "right_gripper": 1, "base": 3, "torso": 1, BASE_MODE: 1}
# RoboCasa's kitchens give PandaOmron's controller this order (kitchen.py); the stock-task path
# sets it too, so robosuite's vector is the HDF5 order either way.
ROBOCASA_BODY_PART_ORDERING = ("right", "right_gripper", "base", "torso")


def field_slices(layout: tuple[tuple[str, int], ...]) -> dict[str, slice]:
    """(field, width) pairs -> field: its slice of the flat vector."""
    out, start = {}, 0
    for name, width in layout:
        out[name] = slice(start, start + width)
        start += width
    return out


def reorder(action: np.ndarray, src: tuple[tuple[str, int], ...], dst: tuple[tuple[str, int], ...]) -> np.ndarray:
    """Permute the last axis of ``action`` from field layout ``src`` to ``dst`` (same fields).
    ``reorder(a, DATASET_ACTION_LAYOUT, HDF5_ACTION_LAYOUT)`` does what RoboCasa's
    ``reorder_lerobot_action`` does; the reverse call, ``reorder_hdf5_action``."""
    action = np.asarray(action)
    s, d = field_slices(src), field_slices(dst)
    if set(s) != set(d):
        raise ValueError(f"layouts name different fields: {sorted(s)} vs {sorted(d)}")
    out = np.empty_like(action)
    for name in s:
        out[..., d[name]] = action[..., s[name]]
    return out


def state_from_observables(raw: Mapping[str, np.ndarray]) -> np.ndarray:
    """observation.state (16,) float32 from robosuite's observables, in the datasets' layout."""
    parts = []
    for field, key, width in STATE_LAYOUT:
        value = np.asarray(raw[key], dtype=np.float64).reshape(-1)
        if value.shape != (width,):
            raise EnvError(f"observable {key} ({field}) has {value.shape[0]} values, RoboCasa's layout has {width}")
        parts.append(value)
    return np.concatenate(parts).astype(np.float32)


class ActionLayout:
    """Maps an action in the datasets' order to robosuite's action vector and back.

    Built from the composite controller's part slices (``_action_split_indexes``, e.g.
    ``{"right": (0, 6), "right_gripper": (6, 7), "base": (7, 10), "torso": (10, 11)}``) and the
    vector's length (one more than the parts for HybridMobileBase's base mode, which is last).
    ``index[i]`` is the robosuite entry that dataset entry ``i`` drives; a robot or controller
    whose parts do not fit (no base or torso, a 7-d joint-space arm, ...) is an EnvError.
    """

    def __init__(self, split_indexes: Mapping[str, tuple[int, int]], dim: int):
        parts = {name: (int(a), int(b)) for name, (a, b) in split_indexes.items()}
        if BASE_MODE not in parts:
            parts[BASE_MODE] = (dim - 1, dim)  # HybridMobileBase: the last entry, after every part
        for part, width in PART_WIDTHS.items():
            if part not in parts:
                raise EnvError(f"RoboCasa's action layout needs a {part!r} part of {width} (PandaOmron with its "
                               f"default OSC_POSE controller); this robot's controller has {sorted(split_indexes)}")
            a, b = parts[part]
            if b - a != width:
                raise EnvError(f"RoboCasa's action layout needs {part!r} of width {width}; this controller's is "
                               f"{b - a} (use robot PandaOmron with an OSC_POSE arm controller)")
        index = np.empty(ACTION_DIM, dtype=np.int64)
        for name, sl in field_slices(DATASET_ACTION_LAYOUT).items():
            targets = [i for part, start, stop in FIELD_PARTS[name] for i in range(parts[part][0] + start,
                                                                                   parts[part][0] + stop)]
            index[sl] = targets
        if dim != ACTION_DIM or sorted(index.tolist()) != list(range(dim)):
            raise EnvError(f"robosuite's action has {dim} entries for parts {dict(split_indexes)}; RoboCasa's layout "
                           f"covers {ACTION_DIM} (PandaOmron: arm 6, gripper 1, base 3, torso 1, base mode 1)")
        self.index = index
        self.dim = dim

    @classmethod
    def from_controller(cls, composite_controller) -> ActionLayout:
        """The layout of a robosuite composite controller (``robot.composite_controller``)."""
        dim = composite_controller.action_limits[0].shape[0]
        return cls(composite_controller._action_split_indexes, dim)

    def to_robosuite(self, action: np.ndarray) -> np.ndarray:
        """Dataset order (..., 12) -> robosuite's action vector (..., 12)."""
        action = np.asarray(action)
        out = np.empty(action.shape[:-1] + (self.dim,), dtype=action.dtype)
        out[..., self.index] = action
        return out

    def to_dataset(self, action: np.ndarray) -> np.ndarray:
        """robosuite's action vector (..., 12) -> dataset order (..., 12)."""
        return np.asarray(action)[..., self.index]
