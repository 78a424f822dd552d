"""RuntimePolicy: normalization, observation history, action queue, ensembling, per-env reset."""

import numpy as np
import pytest
import torch

from tests.test_policy_contract import tiny_config
from vla.data.normalize import Normalizer
from vla.features import ACTION, OBS_STATE
from vla.policy import make_policy
from vla.runtime import PolicyAgent, RuntimePolicy

B = 2


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    cfg = tiny_config("dita")
    policy = make_policy(cfg).eval()
    stats = {OBS_STATE: {"mean": np.zeros(11), "std": np.ones(11)},
             ACTION: {"min": -np.full(7, 2.0), "max": np.full(7, 2.0)}}
    return policy, Normalizer(stats, {OBS_STATE: "mean_std", ACTION: "min_max"})


def obs(step=0, b=B):
    rng = np.random.default_rng(step)
    return {"observation.images.agentview": rng.integers(0, 255, (b, 64, 64, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 255, (b, 64, 64, 3), dtype=np.uint8),
            OBS_STATE: rng.normal(size=(b, 11)).astype(np.float32), "task": ["lift the red cube"] * b}


class Spy:
    """Counts chunk predictions and records what the policy saw."""

    def __init__(self, runtime):
        self.calls, self.seen = 0, []
        inner = runtime.policy.sample_actions

        def wrapped(o, **kw):
            self.calls += 1
            self.seen.append(o)
            return inner(o, **kw)
        runtime.policy.sample_actions = wrapped
        self.undo = lambda: delattr(runtime.policy, "sample_actions")


def test_queue_replans_every_n_action_steps(parts):
    runtime = RuntimePolicy(*parts)  # horizon 8, n_action_steps 4
    spy = Spy(runtime)
    try:
        actions = [runtime.act(obs(i)) for i in range(9)]
    finally:
        spy.undo()
    assert spy.calls == 3  # steps 0, 4, 8
    assert actions[0].shape == (B, 7) and all(np.isfinite(a).all() for a in actions)
    assert np.abs(np.stack(actions)).max() <= 2.0 + 1e-5, "unnormalized into the action range (+-2 here)"
    hist = spy.seen[1]
    assert hist[OBS_STATE].shape == (B, 2, 11) and hist["frames"]["vision"].shape[:2] == (B, 2)
    first = spy.seen[0][OBS_STATE]
    torch.testing.assert_close(first[:, 0], first[:, 1])  # history starts by repeating the first frame


def test_backbone_encodes_only_the_frames_a_prediction_sees(parts):
    """Two observed frames and a chunk every 4 steps: frames 0, 3, 4, 7 and 8 are encoded (the
    first, and the two before each prediction), and the actions are those of encoding every
    frame. A bad observation is still rejected on a step that encodes nothing."""
    policy = parts[0]
    calls = []
    inner = policy.backbone.encode_frames
    policy.backbone.encode_frames = lambda images: calls.append(1) or inner(images)
    try:
        runs = {}
        for name, every_frame in (("lazy", False), ("eager", True)):
            runtime = RuntimePolicy(*parts)  # horizon 8, n_action_steps 4, n_obs_steps 2
            if every_frame:
                runtime._frame_needed = lambda: True
            torch.manual_seed(0)
            calls.clear()
            runs[name] = [runtime.act(obs(i)) for i in range(9)]
            runs[name + "_calls"] = len(calls)
        bad = obs(9)
        bad[OBS_STATE][0, 0] = np.nan
        with pytest.raises(ValueError, match="non-finite"):
            runtime = RuntimePolicy(*parts)
            runtime.act(obs(0))
            runtime.act(bad)  # step 1: no chunk due for 3 steps, nothing encoded
    finally:
        del policy.backbone.encode_frames
    assert runs["lazy_calls"] == 5 and runs["eager_calls"] == 9
    np.testing.assert_array_equal(np.stack(runs["lazy"]), np.stack(runs["eager"]))


def test_temporal_ensembling_queries_every_step(parts):
    runtime = RuntimePolicy(*parts, temporal_ensemble=0.01)
    spy = Spy(runtime)
    try:
        for i in range(5):
            runtime.act(obs(i))
    finally:
        spy.undo()
    assert spy.calls == 5


def test_reset_of_one_env_clears_only_its_queue(parts):
    runtime = RuntimePolicy(*parts)
    spy = Spy(runtime)
    try:
        runtime.act(obs(0))
        runtime.reset([1])  # env 1 starts a new episode: it needs a new chunk and a fresh history
        runtime.act(obs(1))
    finally:
        spy.undo()
    assert spy.calls == 2
    state = spy.seen[1][OBS_STATE]
    torch.testing.assert_close(state[1, 0], state[1, 1])      # env 1's history is its new frame only
    assert not torch.allclose(state[0, 0], state[0, 1])      # env 0 keeps its real history


def test_bad_observations_are_rejected(parts):
    runtime = RuntimePolicy(*parts)
    bad = obs(0)
    bad[OBS_STATE] = bad[OBS_STATE][:, :5]
    with pytest.raises(ValueError, match="observation.state"):
        runtime.act(bad)
    bad = obs(0)
    bad[OBS_STATE][0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        runtime.act(bad)
    with pytest.raises(ValueError, match="n_action_steps"):
        RuntimePolicy(*parts, n_action_steps=99)


def test_policy_agent_drives_one_unbatched_env(parts):
    agent = PolicyAgent(RuntimePolicy(*parts))
    agent.reset()
    single = {k: (v[0] if k != "task" else v[0]) for k, v in obs(0).items()}
    action = agent.act(single)
    assert action.shape == (7,)


def test_the_dataset_mapping_reaches_the_env_observation(parts):
    """A policy trained on a dataset that called its camera `observation.image`, had no wrist
    camera and kept the arm in the first 11 of 14 state values, runs on an env that speaks that
    dataset's keys: the checkpoint's mapping (config.json "data") renames, slices and pads."""
    policy, normalizer = parts
    policy.trained_on = {"features": {"cameras": {"agentview": "observation.image", "wrist": None},
                                      "state": "observation.state[0:11]"}}
    try:
        runtime = RuntimePolicy(policy, normalizer)
        spy = Spy(runtime)
        own = obs(3)
        theirs = {"observation.image": own["observation.images.agentview"], "task": own["task"],
                  OBS_STATE: np.concatenate([own[OBS_STATE], np.full((B, 3), 9.0, np.float32)], axis=1)}
        torch.manual_seed(0)
        first = runtime.act(theirs)
        seen = spy.seen[-1]
        assert seen["camera_is_pad"].tolist() == [[False, True]] * B  # the wrist camera's tokens are masked
        torch.testing.assert_close(seen[OBS_STATE][:, -1], torch.from_numpy(own[OBS_STATE]))  # 11 of 14 values
        # what the env has beyond the dataset changes nothing: a wrist image stays a masked zero image
        runtime.reset()
        torch.manual_seed(0)
        again = runtime.act({**theirs, "observation.images.wrist": own["observation.images.wrist"]})
        np.testing.assert_array_equal(first, again)
        with pytest.raises(ValueError, match=r"no observation.images.agentview \(nor observation.image, which "
                                             r"the dataset's mapping reads it from\)"):
            runtime.act({k: v for k, v in theirs.items() if k != "observation.image"})
    finally:
        policy.trained_on = None
