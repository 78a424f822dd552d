"""vla.data.source: opening datasets, clear errors, feature checks, delta timestamps."""

import datasets
import huggingface_hub
import numpy as np
import pytest

from vla.data.recorder import EpisodeRecorder
from vla.data.source import (
    DatasetError,
    FeatureMismatchError,
    check_features,
    delta_timestamps,
    open_dataset,
)

CAM = "observation.images.front"
FEATURES = {
    CAM: {"dtype": "video", "shape": (24, 32, 3), "names": ["height", "width", "channels"]},
    "observation.state": {"dtype": "float32", "shape": (2,), "names": ["episode", "step"]},
    "action": {"dtype": "float32", "shape": (1,), "names": ["step"]},
}
FPS = 10
LENGTH = 5


@pytest.fixture(scope="module", autouse=True)
def _offline_and_private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets_cache")))
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two episodes of LENGTH frames; state = (episode, step), action = step."""
    root = tmp_path_factory.mktemp("source") / "ds"
    with EpisodeRecorder(root, FEATURES, fps=FPS, task="push the block") as rec:
        for episode in range(2):
            for step in range(LENGTH):
                obs = {CAM: np.full((24, 32, 3), 50 * step, np.uint8),
                       "observation.state": np.array([episode, step], np.float32)}
                rec.add_frame(obs, np.array([step], np.float32))
            rec.save_episode()
    return root


def test_open_local_directory(root):
    ds = open_dataset(root)
    assert ds.meta.total_episodes == 2 and len(ds) == 2 * LENGTH
    assert ds[LENGTH + 1]["observation.state"].tolist() == [1.0, 1.0]
    assert ds[0]["task"] == "push the block"


def test_repo_id_with_a_local_root(root):
    ds = open_dataset("lab/pushing", root=root)  # how a config names a recorded dataset
    assert ds.repo_id == "lab/pushing" and ds.meta.total_episodes == 2


def test_missing_path_is_one_clear_line(tmp_path):
    with pytest.raises(DatasetError) as error:
        open_dataset(tmp_path / "no_such_dataset")
    message = str(error.value)
    assert "no_such_dataset" in message and "does not exist" in message and "\n" not in message


def test_directory_without_dataset_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="not a LeRobot dataset"):
        open_dataset(tmp_path)


def test_unreachable_hub_id_is_one_clear_line():
    with pytest.raises(DatasetError) as error:
        open_dataset("nobody/no-such-dataset")
    message = str(error.value)
    assert "neither a local dataset directory nor reachable" in message and "\n" not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_delta_timestamps_from_policy_offsets():
    from vla.policy import PolicyConfig
    from vla.backbone import BackboneConfig

    cfg = PolicyConfig(n_obs_steps=2, horizon=4, n_action_steps=2, backbone=BackboneConfig(cameras=["front"]))
    dt = delta_timestamps(cfg.frame_offsets(), 20)
    assert dt["observation.state"] == dt[CAM] == [-0.05, 0.0]
    assert dt["action"] == pytest.approx([0.0, 0.05, 0.1, 0.15])


def test_windows_read_through_lerobot_align_and_pad(root):
    dt = delta_timestamps({"observation.state": [-1, 0], CAM: [-1, 0], "action": [0, 1, 2]}, FPS)
    ds = open_dataset(root, delta_timestamps=dt)
    first = ds[LENGTH]  # frame 0 of episode 1: no history before it
    assert first["observation.state"].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert first["observation.state_is_pad"].tolist() == [True, False]
    assert first["action"].squeeze(-1).tolist() == [0.0, 1.0, 2.0], "action 0 is the newest frame's"
    assert first[CAM].shape == (2, 3, 24, 32)
    last = ds[2 * LENGTH - 1]
    assert last["action_is_pad"].tolist() == [False, True, True]
    assert last["observation.state"][:, 1].tolist() == [3.0, 4.0]
    assert abs(last[CAM][1].mean().item() - 200 / 255) < 0.03 and abs(last[CAM][0].mean().item() - 150 / 255) < 0.03


def test_check_features(root):
    meta = open_dataset(root).meta
    check_features(meta.features, {"observation.state": (2,), "action": None, CAM: (3, 24, 32)})
    with pytest.raises(FeatureMismatchError, match="'observation.images.wrist'.*no such feature"):
        check_features(meta.features, {"observation.images.wrist": None})
    with pytest.raises(FeatureMismatchError, match=r"'observation.state'.*expects shape \(11,\).*has \(2,\)"):
        check_features(meta.features, {"observation.state": (11,)})
