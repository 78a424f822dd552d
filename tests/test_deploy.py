"""`vla deploy` on the sim backend: the control loop, asynchronous inference, recording, stops."""

import json
import os
import signal

import numpy as np
import pytest

from vla.cli import main
from tests.conftest import hear_ctrl_c, once_deploy_is_stepping
from vla.chunking import ActionSchedule

pytestmark = pytest.mark.timeout(600)


def chunk(start: int, horizon: int = 8) -> np.ndarray:
    """A chunk whose action for step k is k (so a test reads off which plan ran)."""
    return np.arange(start, start + horizon, dtype=float)[:, None].repeat(2, axis=1)


def test_schedule_skips_actions_made_stale_by_latency():
    s = ActionSchedule(horizon=8, n_action_steps=4)
    assert s.needs_chunk(0, lead=0) and s.action(0) is None  # nothing planned yet: hold
    s.add(0, chunk(0), now=3)  # planned from step 0's observation, arrived at step 3
    assert s.stale_skipped == 3
    assert s.action(3)[0] == 3  # execution resumes with the action planned for step 3
    assert not s.needs_chunk(1, lead=2) and s.needs_chunk(2, lead=2)  # lead = latency in steps
    s.add(2, chunk(2), now=5)  # the newer plan replaces the older one, 3 of its actions late
    assert s.stale_skipped == 6 and s.action(5)[0] == 5
    assert s.action(10) is None  # the plan ran out: the loop holds


def test_schedule_temporal_ensembling_weights_older_plans_more():
    s = ActionSchedule(horizon=4, n_action_steps=1, ensemble=1.0)
    s.add(0, np.zeros((4, 1)), now=0)
    s.add(1, np.ones((4, 1)), now=1)
    w = np.exp(-1.0)
    assert s.action(1)[0] == pytest.approx(w / (1 + w))  # the old plan (0) weighs 1, the new (1) weighs e^-1
    assert s.needs_chunk(1, lead=0)  # ensembling re-plans every step


def test_predict_chunk_matches_the_runtime_chunk(trained_run):
    """The stateless chunk deploy uses is the chunk eval's runtime acts on, same observation."""
    import torch

    from envs.tabletop import make_env
    from vla.checkpoint import load_policy
    from vla.runtime import RuntimePolicy

    runtime = RuntimePolicy(*load_policy(str(trained_run)))
    env = make_env("lift")
    obs, _ = env.reset(seed=0)
    env.close()
    torch.manual_seed(0)
    first = runtime.act({k: [v] if isinstance(v, str) else np.asarray(v)[None] for k, v in obs.items()})[0]
    torch.manual_seed(0)
    planned = runtime.predict_chunk([obs], step=0)
    assert planned.shape == (runtime.horizon, 7)
    np.testing.assert_allclose(planned[0], first, atol=1e-5)


@pytest.mark.parametrize("mode", ["sync", "async", "ensemble"])
def test_deploy_on_sim_records_and_reports(trained_run, tmp_path, capsys, mode):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = tmp_path / "deploy"
    args = ["deploy", f"deploy.checkpoint={trained_run}", f"deploy.output_dir={out}", "deploy.max_steps=12",
            "deploy.episodes=2", f"deploy.async_inference={mode != 'sync'}", "deploy.stop_on_success=false",
            *(["deploy.temporal_ensemble=0.1"] if mode == "ensemble" else [])]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["steps"] == 24
    assert summary["stopped"] == ["max_steps", "max_steps"] and summary["success_rate"] == 0.0
    assert summary["safety"]["commands_sent"] + summary["held_steps"] == 24
    assert summary["period_ms"]["p50"] is not None and summary["inference_ms"]["p50"] is not None
    if mode == "ensemble":  # re-plans back to back: about one chunk per inference time, not per 4 steps
        assert summary["protocol"]["temporal_ensemble"] == 0.1 and summary["chunks"] >= 2
    if mode != "sync":
        assert summary["held_steps"] >= 1  # waited for the first chunk
    else:
        assert summary["held_steps"] == 0 and summary["stale_actions_skipped"] == 0
    assert "report:" in capsys.readouterr().out and (out / "report.md").exists()
    data = LeRobotDataset("local/data", root=out / "data")
    assert data.meta.total_episodes == 2 and data.meta.total_frames == 24
    frame = data[0]
    assert frame["observation.images.agentview"].shape == (3, 96, 96) and frame["action"].shape == (7,)


def test_deploy_dry_run_moves_nothing(trained_run, tmp_path):
    import torch

    out, threads = tmp_path / "dry", torch.get_num_threads()
    try:
        assert main(["deploy", f"deploy.checkpoint={trained_run}", f"deploy.output_dir={out}", "deploy.max_steps=6",
                     "deploy.dry_run=true", "deploy.async_inference=false", "deploy.record=false",
                     "deploy.threads=1"]) == 0
        assert torch.get_num_threads() == 1  # deploy.threads: inference's torch threads
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["dry_run"] and summary["safety"]["commands_sent"] == 6
    assert "(dry run)" in (out / "report.md").read_text()
    assert not (out / "data").exists()


def test_ctrl_c_leaves_the_arm_holding_and_the_episode_saved(trained_run, tmp_path, capsys):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = tmp_path / "interrupted"

    previous = signal.getsignal(signal.SIGINT)
    hear_ctrl_c()
    once_deploy_is_stepping(lambda: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C mid-run
    try:
        code = main(["deploy", f"deploy.checkpoint={trained_run}", f"deploy.output_dir={out}", "deploy.max_steps=2000",
                    "deploy.stop_on_success=false", "robot.safety.max_consecutive_limited=100000"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert "the arm is holding" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == ["interrupted"] and summary["steps"] > 0
    data = LeRobotDataset("local/data", root=out / "data")
    assert data.meta.total_frames == summary["steps"]  # every step up to Ctrl-C is in the dataset
