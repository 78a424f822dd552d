"""Feature names shared by envs, datasets, policies and robot drivers.

The names follow LeRobot's conventions so that a LeRobot dataset recorded anywhere can be
read without renaming. This module imports nothing heavy: robot drivers (which never
import torch) use it too.

One observation, as an env or a robot driver produces it (plain numpy, no batch axis):

    observation.images.<camera>   uint8  (H, W, 3)   RGB, one key per camera
    observation.state             float32 (D_s,)     proprioception
    task                          str                 the language instruction

One action: ``action`` float32 (D_a,).

The end-effector convention (STATE_NAMES, ACTION_NAMES) of the tabletop tasks, robosuite's
Panda tasks and the Franka drivers (OSC_POSE at 20 Hz); an env declares the names of its own
vectors (``feature_names``), and the recorder writes what it declares:

    observation.state = eef_pos (3) | eef_rot6d (6, first two columns of the rotation
                        matrix: continuous, unlike quaternions) | gripper_qpos (2)
    action            = delta eef position (3) | delta eef axis-angle (3) | gripper (1),
                        each in [-1, 1]; gripper -1 = open, +1 = close (robosuite's sign)
"""

import numpy as np

OBS_PREFIX = "observation."
OBS_IMAGES = "observation.images."
OBS_STATE = "observation.state"
# Privileged simulator state (object poses), LeRobot's name for it. Recorded in simulated
# datasets for state-based policies and auxiliary training targets; never a policy input on
# a real robot, where nothing measures it.
OBS_ENV_STATE = "observation.environment_state"
ACTION = "action"
TASK = "task"
# Sub-task phase label of the scripted expert ("reach the red cube", "grasp", ...): a
# string feature per frame, usable as a language annotation by later policies.
PHASE = "annotation.phase"
# LeRobot adds ``<key>_is_pad`` for delta-timestamp frames that fall outside an episode.
PAD_SUFFIX = "_is_pad"
# A dataset mixture's batches (vla/data/mixture.py): which entry (embodiment) each sample came
# from, (B,) long, and which action dimensions are padding for it, (B, D_a) bool.
EMBODIMENT = "embodiment"
ACTION_DIM_PAD = "action_dim_is_pad"
# Cameras a dataset lacks (dataset.features.cameras.<camera>: null), (B, n_cam) bool in the
# policy's camera order: their images are zeros and their tokens are masked in the prefix.
CAMERA_PAD = "camera_is_pad"
# Real-time chunking (vla/chunking.py): the plan a new chunk must agree with, an Observation key at
# sampling time only (a vla.heads.guidance.ActionPrefix), for policies with supports_guidance.
ACTION_PREFIX = "action_prefix"

STATE_NAMES = [
    "eef_x", "eef_y", "eef_z",
    "rot6d_0", "rot6d_1", "rot6d_2", "rot6d_3", "rot6d_4", "rot6d_5",
    "gripper_qpos_0", "gripper_qpos_1",
]
ACTION_NAMES = ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]


def image_key(camera: str) -> str:
    """``agentview`` -> ``observation.images.agentview``."""
    return OBS_IMAGES + camera


def camera_name(key: str) -> str:
    """``observation.images.agentview`` -> ``agentview``."""
    if not key.startswith(OBS_IMAGES):
        raise ValueError(f"{key!r} is not an image feature (expected the prefix {OBS_IMAGES!r})")
    return key[len(OBS_IMAGES):]


def is_image_key(key: str) -> bool:
    return key.startswith(OBS_IMAGES)


def rot6d(rotation: np.ndarray) -> np.ndarray:
    """The state's rotation part: (..., 3, 3) rotation matrices -> (..., 6), column 0 then
    column 1 (continuous, unlike quaternions or Euler angles)."""
    rotation = np.asarray(rotation)
    return np.concatenate([rotation[..., :, 0], rotation[..., :, 1]], axis=-1)
