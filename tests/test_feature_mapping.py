"""dataset.features: training on a LeRobot dataset that names things its own way.

The datasets here are written with lerobot's own API (``LeRobotDataset.create``), in the
convention LeRobot's PushT and Meta-World sets use: one camera called ``observation.image``.
"""

import json

import numpy as np
import pytest
import torch

from tests.conftest import PUSHT_STYLE_FEATURES as FEATURES
from tests.conftest import TINY
from vla.config import FeatureMapConfig
from vla.data.mapping import FeatureMap, Source, parse_source
from vla.errors import ConfigError, FeatureMismatchError


def fmap(**cfg) -> FeatureMap:
    return FeatureMap.from_config(FeatureMapConfig(**cfg))


# --------------------------------------------------------------------------- the mapping itself
@pytest.mark.parametrize("text, source", [
    ("action", Source("action")), ("observation.state[0:7]", Source("observation.state", 0, 7)),
    ("observation.state[2:]", Source("observation.state", 2, None)), ("a[:-1]", Source("a", None, -1)),
    (" action [ 1 : 3 ] ", Source("action", 1, 3)),
])
def test_sources_parse(text, source):
    assert parse_source(text, "x") == source


@pytest.mark.parametrize("bad", ["action[0:7", "action[0]", "action[a:b]", "", "act ion", "action[0:1][2:3]"])
def test_bad_sources_name_the_setting(bad):
    with pytest.raises(ConfigError, match=r"dataset.features.action: .* is not a dataset key or a slice"):
        fmap(action=bad)


def test_a_camera_takes_one_unsliced_key():
    with pytest.raises(ConfigError, match="dataset.features.cameras.top: a camera comes from exactly one"):
        FeatureMap({"observation.images.top": ["observation.image", "observation.image"]},
                   {"observation.images.top": "dataset.features.cameras.top"})


@pytest.mark.parametrize("cfg, message", [
    (dict(cameras={"top": "observation.images.top"}), r"dataset.features.cameras.top: the dataset has no key "
                                                      r"'observation.images.top' \(it has \['action', 'observation"),
    (dict(state="observation.state[0:9]"), r"dataset.features.state: observation.state\[0:9\] is out of range for "
                                           r"'observation.state', which has 4 values"),
    (dict(state="observation.state[3:2]"), r"dataset.features.state: observation.state\[3:2\] is out of range"),
    (dict(action="observation.image"), r"dataset.features.action: 'observation.image' is an image or video, not a "
                                       r"vector"),
    (dict(cameras={"top": "action"}), r"dataset.features.cameras.top: 'action' is a float32 vector, not a camera"),
])
def test_mistakes_name_the_setting_and_the_key(cfg, message):
    with pytest.raises(FeatureMismatchError, match=message):
        fmap(**cfg).features(FEATURES)


def test_features_are_renamed_sliced_and_concatenated():
    m = fmap(cameras={"top": "observation.image"}, state=["observation.state[0:2]", "observation.environment_state"],
             action="action[:2]")
    features = m.features(FEATURES)
    assert features["observation.images.top"] == FEATURES["observation.image"]
    assert features["observation.state"]["shape"] == (5,)
    assert features["observation.state"]["names"] == ["x", "y", "observation.environment_state.0",
                                                      "observation.environment_state.1",
                                                      "observation.environment_state.2"]
    assert features["action"]["shape"] == (2,) and features["action"]["names"] == ["ax", "ay"]
    assert m.source_keys(["observation.state", "action", "observation.images.top", "task"]) == [
        "observation.state", "observation.environment_state", "action", "observation.image", "task"]


def test_statistics_follow_the_values():
    stats = {"observation.state": {"mean": np.arange(4.0), "std": np.ones(4), "count": np.array([10])},
             "observation.environment_state": {"mean": np.array([7.0, 8.0, 9.0]), "std": np.full(3, 2.0),
                                               "count": np.array([10])},
             "observation.image": {"mean": np.zeros((3, 1, 1))}}
    m = fmap(cameras={"top": "observation.image"},
             state=["observation.state[1:3]", "observation.environment_state[2:]"])
    out = m.stats(stats)
    assert out["observation.state"]["mean"].tolist() == [1.0, 2.0, 9.0]
    assert out["observation.state"]["std"].tolist() == [1.0, 1.0, 2.0]
    assert out["observation.images.top"] is stats["observation.image"]
    assert out["observation.environment_state"] is stats["observation.environment_state"]  # its own name, unchanged


def test_values_are_mapped_with_their_padding_flags():
    m = fmap(cameras={"top": "observation.image"}, state=["observation.state[0:2]", "observation.environment_state"])
    batch = {"observation.state": torch.arange(24.0).reshape(2, 3, 4),
             "observation.environment_state": -torch.ones(2, 3, 3),
             "observation.state_is_pad": torch.tensor([[False, False, True]] * 2),
             "observation.environment_state_is_pad": torch.tensor([[True, False, False]] * 2),
             "observation.image": torch.zeros(2, 1, 3, 8, 8)}
    out = m.apply(batch)
    assert out["observation.state"].shape == (2, 3, 5)
    assert out["observation.state"][0, 1].tolist() == [4.0, 5.0, -1.0, -1.0, -1.0]
    assert out["observation.state_is_pad"][0].tolist() == [True, False, True]
    assert out["observation.images.top"] is batch["observation.image"]
    columns = m.apply({"observation.state": np.ones((6, 4)), "observation.environment_state": np.zeros((6, 3))})
    assert columns["observation.state"].shape == (6, 5)


def test_one_key_read_at_two_offsets_is_refused():
    m = fmap(state="action[0:2]")
    assert m.source_offsets({"observation.state": [0], "observation.image": [0]}) == {
        "action": [0], "observation.image": [0]}
    with pytest.raises(ConfigError, match="'action' feeds features read at different frame offsets"):
        m.source_offsets({"observation.state": [0], "action": list(range(8))})


def test_no_mapping_changes_nothing():
    m = fmap()
    assert not m and m.features(FEATURES) == FEATURES
    batch = {"action": torch.ones(2, 3)}
    assert m.apply(batch) == batch


# --------------------------------------------------------------------------- end to end
PUSHT_MAP = ["policy.backbone.cameras=[top]", "dataset.features.cameras.top=observation.image",
             "dataset.features.state=observation.state[0:2]", "dataset.features.action=action[:2]"]


def test_a_dataset_in_another_convention_needs_only_the_mapping(pusht_style, tmp_path, capsys):
    """Without a mapping the run stops at once with a pointer to dataset.features; with it,
    the cached path trains a policy whose dimensions and statistics are those of the mapped
    slices, the checkpoint records the mapping, and `vla eval` runs it in gym-pusht (camera
    top, 2-D state, 2-D action) with nothing extra."""
    from vla.checkpoint import load_policy
    from vla.cli import main

    base = ["train", f"dataset.root={pusht_style}", "dataset.repo_id=lab/pusht-style", "train.steps=2", *TINY]
    assert main([*base, "policy.backbone.cameras=[top]", f"output_dir={tmp_path / 'refused'}"]) == 2
    err = capsys.readouterr().err
    assert "'observation.images.top'" in err and "dataset.features.cameras.top=observation.image" in err
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "mapped"
    assert main([*base, *PUSHT_MAP, f"output_dir={out}"]) == 0
    model_dir = out / "checkpoints" / "last" / "pretrained_model"
    policy, normalizer = load_policy(str(model_dir), "cpu")
    assert (policy.config.state_dim, policy.config.action_dim) == (2, 2)
    stats = json.loads((pusht_style / "meta" / "stats.json").read_text())
    expected = torch.tensor(stats["observation.state"]["mean"][:2], dtype=torch.float32)
    assert torch.allclose(normalizer.state_dict()["observation__state__mean"], expected)
    assert json.loads((model_dir / "config.json").read_text())["data"]["features"] == {
        "cameras": {"top": "observation.image"}, "state": "observation.state[0:2]", "action": "action[:2]"}

    assert main(["eval", "env=pusht", f"eval.checkpoint={out}", "eval.episodes=1", "eval.n_envs=1",
                 "env.max_episode_steps=4", f"eval.output_dir={tmp_path / 'eval'}"]) == 0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["episodes"] == 1


def test_the_raw_path_maps_the_same_way(pusht_style, tmp_path):
    """With the feature cache off, lerobot's own loader reads the source keys at the policy's
    offsets and every batch is mapped: state and action are the slices, the camera is the
    480x640 video resized by the backbone."""
    from vla.config import DatasetConfig
    from vla.data.pipeline import TrainingData
    from vla.policy import policy_config_class

    ds_cfg = DatasetConfig(repo_id="lab/pusht-style", root=str(pusht_style), cache_features=False,
                           features=FeatureMapConfig(cameras={"top": "observation.image"},
                                                     state="observation.state[0:2]", action="action[:2]"))
    policy_cfg = policy_config_class("dita")(n_obs_steps=2, horizon=4, n_action_steps=2)
    policy_cfg.backbone.cameras = ["top"]
    data = TrainingData(ds_cfg, policy_cfg, seed=0, device=torch.device("cpu"), num_workers=0, batch_size=3)
    batch = data.next_batch()
    assert batch["observation.state"].shape == (3, 2, 2) and batch["action"].shape == (3, 4, 2)
    assert batch["observation.images.top"].shape == (3, 2, 3, 480, 640)
    assert "observation.image" not in batch
    assert (batch["action"][:, 0, 0] - batch["observation.state"][:, -1, 0] == 200).all()  # 300 + t vs 100 + t


# --------------------------------------------------------------------------- a camera the dataset lacks
def test_a_null_camera_is_absent():
    m = fmap(cameras={"agentview": "observation.image", "wrist": None})
    assert m.absent == {"observation.images.wrist"} and m.sources_of("observation.images.wrist") == []
    features = m.features(FEATURES)
    assert "observation.images.agentview" in features and "observation.images.wrist" not in features


def test_a_lacking_cameras_tokens_are_masked_and_never_read(pusht_style):
    """Training batches of a dataset without a wrist camera say so (camera_is_pad), and the
    policy's loss does not depend on the features standing in for that camera."""
    from vla.config import DatasetConfig
    from vla.data.pipeline import TrainingData
    from vla.features import CAMERA_PAD
    from vla.policy import make_policy, policy_config_class

    ds_cfg = DatasetConfig(repo_id="lab/pusht-style", root=str(pusht_style),
                           features=FeatureMapConfig(cameras={"agentview": "observation.image", "wrist": None}))
    policy_cfg = policy_config_class("dita")(width=32, depth=1, heads=2, n_obs_steps=1, horizon=4, n_action_steps=2)
    data = TrainingData(ds_cfg, policy_cfg, seed=0, device=torch.device("cpu"), num_workers=0, batch_size=6)
    batch = data.next_batch()
    assert batch[CAMERA_PAD].tolist() == [[False, True]] * 6
    from vla.data.normalize import normalize_batch

    batch = normalize_batch(batch, data.normalizer)
    policy = make_policy(data.policy_cfg)
    prefix = policy.prefix(batch)
    per_camera = policy.backbone._tokens_per_camera()
    text = policy.config.backbone.max_text_tokens
    agentview, wrist = slice(text, text + per_camera), slice(text + per_camera, text + 2 * per_camera)
    assert prefix.mask[:, agentview].all() and not prefix.mask[:, wrist].any()
    other = {**batch, "frames": {k: v.clone() for k, v in batch["frames"].items()}}
    for v in other["frames"].values():
        v[:, :, 1] = torch.randn_like(v[:, :, 1])  # camera 1 (wrist): anything at all
    torch.manual_seed(0)
    loss = policy.compute_loss(batch)[0]
    torch.manual_seed(0)
    assert torch.allclose(loss, policy.compute_loss(other)[0])


def test_a_lacking_camera_trains_on_both_paths(pusht_style, tmp_path):
    from vla.cli import main

    base = ["train", f"dataset.root={pusht_style}", "dataset.repo_id=lab/pusht-style", "train.steps=2", *TINY,
            "dataset.features.cameras.agentview=observation.image", "dataset.features.cameras.wrist=null"]
    assert main([*base, f"output_dir={tmp_path / 'cached'}"]) == 0
    assert main([*base, "dataset.cache_features=false", f"output_dir={tmp_path / 'raw'}"]) == 0
