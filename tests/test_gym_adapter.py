"""env.family=gym: real gymnasium envs (gym-pusht, Pendulum, CartPole) in vla's convention, the
one-line errors of bad mappings, and collect -> train -> eval on PushT through the CLI."""

import json

import gymnasium as gym
import numpy as np
import pytest

from envs.gym_adapter import GymAdapterError, make_env, wrap
from tests.conftest import TINY
from vla.cli import main

PUSHT = "gym_pusht/PushT-v0"
PUSHT_MAPPING = {"images": {"top": "pixels"}, "state": ["agent_pos"]}
INSTRUCTION = "push the T-shaped block onto the T-shaped target"


def pusht(mapping=PUSHT_MAPPING, cameras=("top",), instruction=INSTRUCTION, **kwargs):
    return make_env(PUSHT, mapping, cameras=cameras, instruction=instruction, obs_type="pixels_agent_pos", **kwargs)


def test_pusht_observations_follow_the_convention():
    env = pusht()
    try:
        space = env.observation_space
        assert set(space.spaces) == {"observation.images.top", "observation.state", "task"}
        assert space["observation.images.top"] == gym.spaces.Box(0, 255, (96, 96, 3), np.uint8)
        assert env.action_space == env.unwrapped.action_space and env.metadata["render_fps"] == 10
        obs, info = env.reset(seed=3)
        assert info["is_success"] is False and space.contains(obs)
        assert obs["observation.state"].dtype == np.float32 and obs["task"] == INSTRUCTION
        raw = env.unwrapped.get_obs()  # the env's own observation of the same state
        np.testing.assert_allclose(obs["observation.state"], raw["agent_pos"], rtol=1e-6)
        np.testing.assert_array_equal(obs["observation.images.top"], raw["pixels"])
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(np.array([256.0, 256.0], np.float32))
            assert space.contains(obs) and isinstance(info["is_success"], bool)
            np.testing.assert_allclose(obs["observation.state"], env.unwrapped.get_obs()["agent_pos"], rtol=1e-6)
        again, _ = env.reset(seed=3)
        first, _ = pusht().reset(seed=3)
        other, _ = env.reset(seed=4)
        for key in ("observation.images.top", "observation.state"):
            np.testing.assert_array_equal(again[key], first[key])
        assert not np.array_equal(other["observation.state"], first["observation.state"])
    finally:
        env.close()


def test_render_as_camera_and_float_channels_first_images():
    env = pusht({"images": {"top": "render"}, "state": ["agent_pos"]},
                visualization_width=64, visualization_height=48)
    obs, _ = env.reset(seed=0)
    assert env.observation_space["observation.images.top"].shape == (48, 64, 3)
    np.testing.assert_array_equal(obs["observation.images.top"], env.render())
    env.close()
    # an env of one's own making, with images as float CHW in [0, 1] (gymnasium's own wrapper)
    base = gym.make(PUSHT, obs_type="pixels_agent_pos")
    chw = gym.spaces.Dict({"pixels": gym.spaces.Box(0.0, 1.0, (3, 96, 96), np.float32),
                           "agent_pos": base.observation_space["agent_pos"]})
    def to_chw(o):
        return {"pixels": o["pixels"].transpose(2, 0, 1).astype(np.float32) / 255, "agent_pos": o["agent_pos"]}

    env = wrap(gym.wrappers.TransformObservation(base, to_chw, chw), PUSHT_MAPPING, cameras=["top"],
               instruction=INSTRUCTION)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs["observation.images.top"], base.unwrapped.get_obs()["pixels"])


def test_box_env_with_slices_and_success_reward():
    actions = [np.array([2.0 if t % 10 < 5 else -2.0], np.float32) for t in range(25)]
    raw_env = gym.make("Pendulum-v1")
    raw_env.reset(seed=5)
    threshold = float(np.median([raw_env.step(a)[1] for a in actions]))  # half the steps "succeed"
    mapping = {"state": ["[0:2]"], "env_state": ["[-1:]", "[::2]"], "success_reward": threshold}
    env = make_env("Pendulum-v1", mapping, instruction="swing the pendulum up")
    obs, info = env.reset(seed=5)
    raw, _ = raw_env.reset(seed=5)
    assert set(obs) == {"observation.state", "observation.environment_state", "task"} and info["is_success"] is False
    np.testing.assert_allclose(obs["observation.state"], raw[0:2], rtol=1e-6)
    np.testing.assert_allclose(obs["observation.environment_state"], np.r_[raw[-1:], raw[::2]], rtol=1e-6)
    successes = []
    for action in actions:
        obs, reward, *_, info = env.step(action)
        raw, raw_reward, *_ = raw_env.step(action)
        np.testing.assert_allclose(obs["observation.state"], raw[0:2], rtol=1e-6)
        assert info["is_success"] == (reward >= threshold) and reward == raw_reward
        successes.append(info["is_success"])
    assert 0 < sum(successes) < len(successes)
    # a Discrete action space passes through unchanged
    cartpole = make_env("CartPole-v1", {"state": ["[1:4]"], "success_reward": 1.0}, instruction="balance")
    cartpole.reset(seed=0)
    obs, reward, *_, info = cartpole.step(1)
    assert obs["observation.state"].shape == (3,) and info["is_success"] is True


@pytest.mark.parametrize("change, culprit", [
    (dict(mapping={"images": {"top": "pixels"}, "state": ["agent_poz"]}), "'agent_poz'.*available keys.*agent_pos"),
    (dict(mapping={"images": {"top": "pixels"}, "state": ["agent_pos[0:5]"]}), r"agent_pos\[0:5\].*size 2"),
    (dict(mapping={"images": {"top": "pixels"}, "state": ["agent_pos[x]"]}), r"agent_pos\[x\]"),
    (dict(mapping={"images": {"top": "pixels"}, "state": ["[0:2]"]}), r"'\[0:2\]'.*keys"),
    (dict(cameras=("top", "wrist")), "camera 'wrist'"),
    (dict(mapping={"images": {"top": "agent_pos"}, "state": ["agent_pos"]}), "images.top 'agent_pos'.*not an image"),
    (dict(mapping={"images": {"top": "pixels"}, "state": ["render"]}), "state.*render"),
    (dict(mapping={"images": {"top": "pixels"}}), "env.gym.state is empty"),
    (dict(instruction=None), "env.instruction"),
    (dict(env_id="gym_nope/Foo-v0"), "'gym_nope/Foo-v0'.*install"),
    (dict(env_id="gym_pusht/Nope-v0"), "'gym_pusht/Nope-v0'"),
])
def test_bad_mapping_is_a_one_line_error(change, culprit):
    kwargs = dict(mapping=PUSHT_MAPPING, cameras=("top",), instruction=INSTRUCTION, env_id=PUSHT) | change
    with pytest.raises(GymAdapterError, match=culprit) as e:
        make_env(kwargs.pop("env_id"), kwargs.pop("mapping"), obs_type="pixels_agent_pos", **kwargs)
    assert "\n" not in str(e.value)


def test_bad_action_and_missing_success_are_one_line_errors():
    env = pusht()
    env.reset(seed=0)
    with pytest.raises(GymAdapterError, match=r"shape \(7,\).*expects shape \(2,\)"):
        env.step(np.zeros(7, np.float32))
    cartpole = make_env("CartPole-v1", {"state": ["[:]"]}, instruction="balance")
    cartpole.reset(seed=0)
    with pytest.raises(GymAdapterError, match="env.gym.success.*env.gym.success_reward") as e:
        cartpole.step(0)
    assert "\n" not in str(e.value)


def test_pusht_collect_train_eval_through_the_cli(tmp_path, capsys):
    root, run, ev = tmp_path / "pusht", tmp_path / "run", tmp_path / "eval"
    assert main(["collect", "env=pusht", "collect.agent=random", "collect.episodes=2", "collect.success_only=false",
                 "env.max_episode_steps=8", f"dataset.root={root}", "dataset.repo_id=local/pusht"]) == 0
    from vla.data.source import open_dataset

    ds = open_dataset(root)
    feats = ds.meta.features
    image = feats["observation.images.top"]
    assert tuple(image["shape"]) == (96, 96, 3) and image["dtype"] == "video"
    assert tuple(feats["observation.state"]["shape"]) == (2,) and tuple(feats["action"]["shape"]) == (2,)
    assert ds.meta.total_episodes == 2 and ds.meta.total_frames == 16 and ds.meta.fps == 10
    assert ds[0]["task"] == "push the T-shaped block onto the T-shaped target"

    assert main(["train", "env=pusht", f"dataset.root={root}", f"output_dir={run}", "train.steps=2",
                 "train.save_every=2", "policy.backbone.cameras=[top]", *TINY]) == 0

    capsys.readouterr()
    assert main(["eval", "env=pusht", f"eval.checkpoint={run}", "eval.episodes=2", "eval.n_envs=2",
                 "env.max_episode_steps=8", "eval.max_videos=1", f"eval.output_dir={ev}"]) == 0
    assert "success rate" in capsys.readouterr().out
    report = json.loads((ev / "report.json").read_text())
    assert report["episodes"] == 2 and {r["seed"] for r in report["episodes_detail"]} == {100000, 100001}
    assert all(r["length"] == 8 for r in report["episodes_detail"])  # an untrained policy times out
    assert list(report["per_task"]) == ["gym_pusht/PushT-v0"] and report["protocol"]["env"]["family"] == "gym"
    videos = list((ev / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
