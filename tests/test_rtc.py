"""Real-time chunking: the soft mask, the processes' flow view, guided sampling, and the policies
and runtime that follow a chunk prefix."""

import json
import math

import numpy as np
import pytest
import torch

from tests.test_policy_contract import raw_batch, tiny_config
from vla.cli import main
from vla.contract import check_observation
from vla.data.normalize import Normalizer
from vla.features import ACTION, ACTION_PREFIX, OBS_STATE
from vla.heads import NoiseProcessConfig, make_noise_process
from vla.heads.guidance import ActionPrefix, guidance_weight, guided_output
from vla.policy import make_policy
from vla.chunking import ChunkPrefix, prefix_weights
from vla.runtime import RuntimePolicy

PROCESSES = {"flow": NoiseProcessConfig(kind="flow", num_inference_steps=10),
             "diffusion": NoiseProcessConfig(kind="diffusion", num_inference_steps=10, clip_sample=False)}


def test_prefix_weights_freeze_the_delay_and_decay_over_the_overlap():
    w = prefix_weights(delay=4, overlap=12, horizon=16)
    assert w.shape == (16,)
    assert (w[:4] == 1).all() and (w[12:] == 0).all()
    assert (np.diff(w[3:13]) < 0).all() and 0 < w[11] < w[4] < 1
    # the paper's c * (e^c - 1) / (e - 1) with c = (overlap - i) / (overlap - delay + 1)
    c = 8 / 9
    assert w[4] == pytest.approx(c * math.expm1(c) / (math.e - 1))
    assert (prefix_weights(0, 0, 16) == 0).all()
    assert (prefix_weights(6, 4, 16) == np.r_[np.ones(4), np.zeros(12)]).all()  # no more frozen than planned
    # the hard mask: the frozen actions only
    assert (prefix_weights(4, 12, 16, "hard") == np.r_[np.ones(4), np.zeros(12)]).all()


def test_chunk_prefix_pads_and_refuses_bad_plans():
    actions, weights = ChunkPrefix(np.ones((5, 7)), delay=2).padded(8)
    assert actions.shape == (8, 7) and (actions[5:] == 0).all() and (weights[5:] == 0).all()
    assert ChunkPrefix.from_wire(ChunkPrefix(np.ones((3, 2)), 1, 2.0).to_wire()).max_guidance == 2.0
    hard = ChunkPrefix.from_wire(ChunkPrefix(np.ones((5, 2)), 1, mask="hard").to_wire())
    assert hard.mask == "hard" and (hard.padded(8)[1] == np.r_[1, np.zeros(7)]).all()
    for bad in (dict(actions=np.ones(3), delay=0), dict(actions=np.full((2, 2), np.nan), delay=0),
                dict(actions=np.ones((2, 2)), delay=-1), dict(actions=np.ones((2, 2)), delay=0, max_guidance=0),
                dict(actions=np.ones((2, 2)), delay=0, mask="feathered")):
        with pytest.raises(ValueError):
            ChunkPrefix(**bad)
    with pytest.raises(ValueError, match="delay"):
        ChunkPrefix.from_wire({"actions": np.ones((2, 2))})


@pytest.mark.parametrize("kind", PROCESSES)
def test_the_flow_view_is_each_process_own_parametrisation(kind):
    """x_t = c ((1 - s) x0 + s eps), and an output converts to a velocity and back unchanged."""
    process = make_noise_process(PROCESSES[kind])
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 8, 3), torch.randn(4, 8, 3)
    for t in process.sampling_times()[:-1]:
        s, c = process.flow_time(t)
        x_t = process.add_noise(x0, eps, torch.full((4,), t))
        torch.testing.assert_close(x_t, c * ((1 - s) * x0 + s * eps), atol=1e-5, rtol=1e-5)
        out = process.target(x0, eps, torch.full((4,), t))  # the exact model output
        u = process.to_velocity(x_t, out, t)
        # float32: at the noisiest DDIM step (alpha_bar ~ 2e-7) recovering x0 amplifies rounding ~2000x
        torch.testing.assert_close(u, eps - x0, atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(process.from_velocity(x_t, u, t), out, atol=2e-3, rtol=1e-3)


def gaussian_model(process, t, mean):
    """The exact denoiser when every action value is N(mean, 1): E[x0 | x_t] is linear in x_t."""
    s, c = process.flow_time(t)

    def model(x_t):
        x = x_t / c
        x0 = mean + (1 - s) / ((1 - s) ** 2 + s ** 2) * (x - (1 - s) * mean)
        return process.from_velocity(x_t, (x - x0) / s, t)
    return model


@pytest.mark.parametrize("kind", PROCESSES)
def test_guidance_pulls_the_frozen_actions_onto_the_plan_and_leaves_the_rest(kind):
    process = make_noise_process(PROCESSES[kind])
    torch.manual_seed(0)
    b, h = 512, 8
    target = torch.full((b, h, 1), 2.0)
    weights = torch.tensor(prefix_weights(3, 3, h))[None].expand(b, -1)
    guide = ActionPrefix(target, weights, max_guidance=5.0)
    x_plain = x_guided = torch.randn(b, h, 1)
    times = process.sampling_times()
    for t, t_next in zip(times[:-1], times[1:]):
        x_plain = process.step(x_plain, gaussian_model(process, t, 0.0)(x_plain), t, t_next)
        x_guided = process.step(x_guided, guided_output(process, x_guided, t, gaussian_model(process, t, 0.0), guide),
                                t, t_next)
    assert x_plain.mean().abs() < 0.15 and (x_plain.std() - 1).abs() < 0.15  # unguided: the prior, N(0, 1)
    frozen, free = x_guided[:, :3], x_guided[:, 3:]
    assert (frozen.mean() - 2.0).abs() < 0.3 and frozen.std() < 0.5  # onto the plan
    torch.testing.assert_close(free, x_plain[:, 3:], atol=1e-3, rtol=1e-3)  # values the weights leave alone


def test_guidance_weight_is_capped_near_noise_and_data():
    assert guidance_weight(1.0, 5.0) == 5.0 and guidance_weight(0.0, 5.0) == 5.0
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0)  # s / ((1 - s) r^2), r^2 = 1/2
    assert guidance_weight(0.5, 1.0) == 1.0


@pytest.mark.parametrize("name,method", [("dita", "inpaint"), ("dita", "guidance"), ("dust", "inpaint"),
                                         ("dust", "guidance")])
def test_policies_sample_toward_the_prefix(name, method):
    """Untrained policies: the frozen actions move onto the plan. (Dita's guidance differentiates the
    clean estimate as DDIM clamps it; unclamped, it saturated: see vla/heads/guidance.py.)"""
    torch.manual_seed(0)
    cfg = tiny_config(name)
    policy = make_policy(cfg).eval()
    obs = raw_batch(cfg, with_actions=False)
    b, h, d = obs[OBS_STATE].shape[0], cfg.horizon, cfg.action_dim
    noise = torch.randn(b, h, d)
    plain = policy.sample_actions(obs, noise=noise)
    target = torch.full((b, h, d), 0.5)
    weights = torch.tensor(prefix_weights(3, 6, h))[None].expand(b, -1)
    guided = policy.sample_actions({**obs, ACTION_PREFIX: ActionPrefix(target, weights, method=method)}, noise=noise)
    assert guided.shape == plain.shape and torch.isfinite(guided).all()
    err = lambda x: (x[:, :3] - target[:, :3]).abs().mean()  # noqa: E731
    assert err(guided) < 0.5 * err(plain)
    with pytest.raises(ValueError, match=ACTION_PREFIX):  # the runtime's shape check names the key
        check_observation({**obs, ACTION_PREFIX: ActionPrefix(target[:, :4], weights)}, cfg)


def test_dita_guided_sampling_through_its_forked_cache_is_the_uncached_denoiser_guided():
    torch.manual_seed(0)
    cfg = tiny_config("dita")
    policy = make_policy(cfg).eval()
    obs = raw_batch(cfg, with_actions=False)
    b, h, d = obs[OBS_STATE].shape[0], cfg.horizon, cfg.action_dim
    guide = ActionPrefix(torch.full((b, h, d), 0.5), torch.tensor(prefix_weights(3, 6, h))[None].expand(b, -1),
                         max_guidance=1.0, method="guidance")
    noise = torch.randn(b, h, d)
    cached = policy.sample_actions({**obs, ACTION_PREFIX: guide}, noise=noise)
    with torch.no_grad():
        prefix = policy.prefix(obs)
        mask = policy._full_mask(prefix.mask)
        x, process, times = noise, policy.process, policy.process.sampling_times()
        for t, t_next in zip(times[:-1], times[1:]):
            tt = torch.full((b,), t)
            out = guided_output(process, x, t, lambda z: policy.denoise(prefix.tokens, mask, z, tt), guide)  # noqa: B023
            x = process.step(x, out, t, t_next)
    torch.testing.assert_close(cached, x, atol=1e-4, rtol=1e-4)


def _runtime(name):
    torch.manual_seed(0)
    policy = make_policy(tiny_config(name)).eval()
    stats = {OBS_STATE: {"mean": np.zeros(11), "std": np.ones(11)},
             ACTION: {"min": -np.full(7, 2.0), "max": np.full(7, 2.0)}}
    return RuntimePolicy(policy, Normalizer(stats, {OBS_STATE: "mean_std", ACTION: "min_max"}))


def observation(seed=0):
    rng = np.random.default_rng(seed)
    return {"observation.images.agentview": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
            OBS_STATE: rng.normal(size=11).astype(np.float32), "task": "lift the red cube"}


def test_runtime_conditions_a_chunk_on_a_plan_in_raw_units():
    runtime = _runtime("dita")
    plan = np.full((6, 7), 1.5, dtype=np.float32)  # raw units: the actions' range is [-2, 2]
    torch.manual_seed(1)
    plain = runtime.predict_chunk([observation()], 0)
    torch.manual_seed(1)
    guided = runtime.predict_chunk([observation()], 0, ChunkPrefix(plan, delay=3, method="inpaint"))
    assert np.abs(guided[:3] - 1.5).mean() < 0.5 * np.abs(plain[:3] - 1.5).mean()
    with pytest.raises(ValueError, match="action values"):
        runtime.predict_chunk([observation()], 0, ChunkPrefix(np.ones((6, 3)), delay=3))


def test_a_policy_without_a_noise_process_refuses_a_prefix():
    runtime = _runtime("omnijarvis")
    with pytest.raises(ValueError, match="cannot follow a chunk prefix"):
        runtime.predict_chunk([observation()], 0, ChunkPrefix(np.ones((6, 7)), delay=3))


# --- deploy: the plan a chunk is conditioned on, injected delays, smoothness, bad settings ----------
def test_schedule_plan_is_the_newest_chunk_from_a_step_on():
    from vla.chunking import ActionSchedule

    s = ActionSchedule(horizon=8, n_action_steps=4)
    assert s.plan(0) is None
    s.add(2, np.arange(8.0)[:, None], now=2)
    np.testing.assert_array_equal(s.plan(5)[:, 0], [3, 4, 5, 6, 7])
    assert s.source(5) == 2 and s.plan(10) is None and s.source(10) is None


class Recorder:
    """Wraps a runtime's predict_chunk: records each call's step and prefix."""

    def __init__(self, runtime):
        self.calls, self.chunks, self._inner = [], [], runtime.predict_chunk
        runtime.predict_chunk = self

    def __call__(self, history, step, prefix=None, seed=None):
        self.calls.append((step, prefix))
        self.chunks.append(self._inner(history, step, prefix, seed))
        return self.chunks[-1]


@pytest.mark.parametrize("rtc", [False, True])
def test_a_delayed_synchronous_chunk_lands_late_and_rtc_hands_it_the_plan(trained_run, tmp_path, rtc):
    """Lockstep sim, 100 ms injected at 20 Hz: each chunk takes effect 2 steps after its observation
    (2 stale actions each), and with RTC each chunk after the first is given the plan from its
    observation step with delay 2."""
    from vla.checkpoint import load_policy
    from vla.config import DeployConfig
    from vla.deploy import Deployer
    from vla.deploy_report import summarize
    from vla.runtime import RuntimePolicy
    from envs.robot import make_robot
    from envs.robot.config import RobotConfig

    runtime = RuntimePolicy(*load_policy(str(trained_run)))  # horizon 8, 4 actions per chunk (TINY)
    calls = Recorder(runtime).calls
    cfg = DeployConfig(max_steps=20, async_inference=False, stop_on_success=False, inject_delay_ms=100,
                       rtc=rtc, rtc_method="inpaint")
    robot = make_robot(RobotConfig(backend="sim"), log_path=tmp_path / "log.jsonl")
    with robot:
        robot.reset_episode(0)
        result = Deployer(robot, runtime, cfg, progress=False).run_episode()
    starts = [s for s, _ in calls]
    assert starts[:3] == [0, 2, 4] and result.held_steps == 2  # the first chunk: 2 steps of holding
    assert result.stale_skipped == 2 * (result.chunks - (1 if starts[-1] + 2 > 19 else 0))
    prefixes = [p for _, p in calls]
    assert prefixes[0] is None  # nothing planned yet
    if rtc:
        assert all(p is not None and p.delay == 2 and p.method == "inpaint" for p in prefixes[1:])
        assert len(prefixes[1].actions) == runtime.horizon - 2  # the first plan, from step 2 on
    else:
        assert all(p is None for p in prefixes)
    summary = summarize([result], robot, {})
    assert summary["boundary_jerk"] is not None and summary["within_chunk_jerk"] is not None


def test_deploy_rtc_on_sim_reports_it_and_refuses_what_it_cannot_do(trained_run, tmp_path, capsys):
    out = tmp_path / "rtc"
    base = ["deploy", f"deploy.checkpoint={trained_run}", f"deploy.output_dir={out}", "deploy.max_steps=10",
            "deploy.async_inference=false", "deploy.record=false", "deploy.stop_on_success=false"]
    assert main([*base, "deploy.rtc=true", "deploy.inject_delay_ms=100", "deploy.rtc_mask=hard"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["rtc"] and summary["protocol"]["inject_delay_ms"] == 100
    assert summary["protocol"]["rtc_mask"] == "hard"
    assert summary["stale_actions_skipped"] >= 2
    assert "real-time chunking (guidance, hard mask); injected delay 100 ms" in (out / "report.md").read_text()
    capsys.readouterr()
    for bad, says in ((["deploy.rtc=true", "deploy.temporal_ensemble=0.1"], "choose one"),
                      (["deploy.rtc_method=magic"], "deploy.rtc_method"),
                      (["deploy.rtc_mask=feathered"], "deploy.rtc_mask"),
                      (["deploy.inject_delay_ms=-1"], "deploy.inject_delay_ms")):
        assert main([*base, f"deploy.output_dir={tmp_path / 'bad'}", *bad]) == 2
        assert says in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


# --- deploy.time_scale: the same path at a real arm's speed -----------------------------------------
def test_time_scale_spreads_each_policy_step_over_several_periods(trained_run, tmp_path):
    from vla.checkpoint import load_policy
    from vla.config import DeployConfig
    from vla.deploy import Deployer
    from vla.runtime import RuntimePolicy
    from envs.robot import make_robot
    from envs.robot.config import RobotConfig

    runtime = RuntimePolicy(*load_policy(str(trained_run)))
    recorder = Recorder(runtime)
    calls = recorder.calls
    robot = make_robot(RobotConfig(backend="sim"), log_path=tmp_path / "log.jsonl")
    sent, send = [], robot.send_action
    robot.send_action = lambda a: (sent.append(np.array(a)), send(a))[1]
    deployer = Deployer(robot, runtime, DeployConfig(max_steps=8, async_inference=False, stop_on_success=False,
                                                     time_scale=2, record=False), progress=False)
    with robot:
        robot.reset_episode(0)
        result = deployer.run_episode()
    assert result.steps == 8 and len(sent) == 16  # 8 policy steps, 2 periods each
    assert [s for s, _ in calls] == [0, 4]  # the policy plans in its own steps (4 actions per chunk)
    for first, second in zip(sent[::2], sent[1::2]):
        np.testing.assert_array_equal(first, second)  # an eef delta split evenly: half, then half
    np.testing.assert_allclose(sent[0], np.r_[recorder.chunks[0][0, :-1] / 2, recorder.chunks[0][0, -1]], rtol=1e-6)
    # joint targets are approached in equal parts from where the step began; the gripper as planned
    deployer.robot.config.action_space = "joint_position"
    loop = type("Loop", (), {"step_start": np.zeros(7), "sub": 0})()
    action = np.r_[np.full(7, 0.4), 1.0]
    np.testing.assert_allclose(deployer._slowed(action, loop), np.r_[np.full(7, 0.2), 1.0])
    loop.sub = 1
    np.testing.assert_allclose(deployer._slowed(action, loop), action)


def test_the_rtc_and_arm_speed_benchmarks_fill_their_tables(trained_run, tmp_path):
    """A tiny run of each harness: every setting gets a row, a rerun skips what is done."""
    from benchmarks import arm_speed, rtc

    common = ["--checkpoint", str(trained_run), "--episodes", "1", "--max-steps", "6", "--markdown",
              str(tmp_path / "RESULTS.md")]
    rtc.main([*common, "--delays", "100", "--modes", "skip", "rtc-inpaint", "--out", str(tmp_path / "rtc"),
              "--results", str(tmp_path / "rtc.json")])
    rows = json.loads((tmp_path / "rtc.json").read_text())
    assert sorted(rows) == ["lift|100|rtc-inpaint", "lift|100|skip"]
    assert rows["lift|100|skip"]["stale_actions_skipped"] >= 2 and "deploy.inject_delay_ms=100" in \
        rows["lift|100|skip"]["command"]
    arm_speed.main([*common, "--out", str(tmp_path / "speed"), "--results", str(tmp_path / "speed.json")])
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert len(speed) == 3 and speed["lift|0.25 m/s, time_scale 4"]["commands_sent"] == 24  # 6 steps x 4 periods
    text = (tmp_path / "RESULTS.md").read_text()
    assert "Real-time chunking under injected delays: lift" in text and "A real arm's speed limit: lift" in text
    before = (tmp_path / "rtc.json").stat().st_mtime
    rtc.main([*common, "--delays", "100", "--modes", "skip", "--out", str(tmp_path / "rtc"),
              "--results", str(tmp_path / "rtc.json")])
    assert (tmp_path / "rtc.json").stat().st_mtime == before  # nothing rerun
