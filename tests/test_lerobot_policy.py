"""LeRobot checkpoints in vla's envs: trained with LeRobot's own classes, run by `vla eval`."""

import json

import numpy as np
import pytest

from vla.cli import main

from tests.conftest import LEROBOT_FEATURES as FEATURES


def test_lerobot_training_writes_a_standard_checkpoint_reading_only_the_chosen_inputs(act_run):
    model = act_run / "pretrained_model"
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"} <= names
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["type"] == "act" and sorted(cfg["input_features"]) == sorted(FEATURES)  # no environment_state
    assert cfg["chunk_size"] == 8 and cfg["pretrained_backbone_weights"] is None
    s = json.loads((act_run / "summary.json").read_text())
    assert s["steps"] == 2 and s["stopped_by"] == "steps" and s["samples_seen"] == 8 and s["final_loss"] > 0


def test_vla_eval_runs_a_lerobot_checkpoint(act_run, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "env=lift", "env.max_episode_steps=6", f"eval.checkpoint={act_run / 'pretrained_model'}",
                 "eval.episodes=2", "eval.n_envs=2", "eval.max_videos=1", f"eval.output_dir={out}"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["episodes"] == 2 and report["protocol"]["policy"] == "lerobot/act"
    assert report["protocol"]["n_action_steps (replan every)"] == 4
    assert [r["length"] for r in report["episodes_detail"]] == [6, 6]
    assert len(list((out / "videos").glob("*.mp4"))) == 1


def _runtime(act_run):
    from vla.lerobot_policy import load_lerobot_runtime

    return load_lerobot_runtime(str(act_run))  # the run dir: its pretrained_model/ is found


def _observations(n: int, size: int = 96) -> dict:
    """Real tabletop observations of ``n`` scenes, batched as vla's vector envs give them."""
    from envs.tabletop import make_env

    env = make_env("lift", image_size=size)
    obs = [env.reset(seed=s)[0] for s in range(n)]
    env.close()
    return {k: ([o[k] for o in obs] if isinstance(obs[0][k], str) else np.stack([o[k] for o in obs])) for k in obs[0]}


def test_actions_are_those_of_lerobots_own_env_path(act_run):
    """The same observation through LeRobot's preprocess_observation -> preprocessor ->
    select_action -> postprocessor gives the same action as vla's runtime."""
    from lerobot.envs.utils import preprocess_observation

    from vla.lerobot_policy import load_lerobot_policy

    obs = _observations(1)
    ours = _runtime(act_run).act(obs)
    policy, pre, post = load_lerobot_policy(act_run / "pretrained_model")
    policy.reset()
    gym_obs = {"pixels": {c: obs[f"observation.images.{c}"] for c in ("agentview", "wrist")},
               "agent_pos": obs["observation.state"]}
    batch = {**preprocess_observation(gym_obs), "task": list(obs["task"])}
    theirs = post(policy.select_action(pre(batch))).numpy()
    assert ours.shape == (1, 7)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_each_env_keeps_its_own_action_queue(act_run):
    runtime = _runtime(act_run)
    obs = _observations(2)
    first = runtime.act(obs)
    assert [len(c._action_queue) for c in runtime._copies] == [3, 3]  # 4 planned, 1 executed each
    runtime.reset([0])                                                 # env 0's episode ended
    assert [len(c._action_queue) for c in runtime._copies] == [0, 3]
    second = runtime.act(obs)
    assert not np.allclose(first[1], second[1])  # env 1 went on with its queued chunk
    np.testing.assert_allclose(first[0], second[0], rtol=1e-5, atol=1e-6)  # env 0 re-planned from the same obs


def test_a_lerobot_checkpoint_refuses_what_does_not_fit(act_run, tmp_path, capsys):
    runtime = _runtime(act_run)
    with pytest.raises(ValueError, match=r"observation.images.agentview.*\(96, 96, 3\)"):
        runtime.act(_observations(1, size=64))
    obs = _observations(1)
    obs["observation.state"][0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        runtime.act(obs)
    code = main(["eval", f"eval.checkpoint={act_run}", "eval.test_time_scaling=2", f"output_dir={tmp_path}"])
    assert code == 2 and "eval.test_time_scaling applies to vla policies" in capsys.readouterr().err
    from vla.checkpoint import load_policy
    from vla.errors import CheckpointError

    with pytest.raises(CheckpointError, match="LeRobot 'act' checkpoint"):
        load_policy(str(act_run / "pretrained_model"))
