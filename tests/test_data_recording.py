"""vla.data.recorder and vla.data.collect: round trip, append, validation, crash safety.

The crash tests run a real recording in a subprocess (this file, run as a script) and kill it
with SIGKILL at a known point.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import gymnasium as gym
import huggingface_hub
import numpy as np
import pytest
from gymnasium import spaces
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from vla.data.collect import collect
from vla.data.recorder import EpisodeRecorder, features_from_space, repair_dataset
from vla.data.source import open_dataset
from vla.errors import DatasetError
from vla.features import ACTION_NAMES, PHASE, STATE_NAMES

REPO = Path(__file__).resolve().parents[1]

CAM = "observation.images.agentview"
SIZE = 32
INSTRUCTION = "lift the red cube"


class CountingEnv(gym.Env):
    """Tabletop-shaped env: the state and the image brightness encode (episode seed, step),
    so every recorded frame can be traced back. Succeeds at ``length`` steps when the seed is
    even (odd seeds time out), so success filtering is checkable."""

    feature_names = {"observation.state": STATE_NAMES, "action": ACTION_NAMES}  # what the recorder writes

    def __init__(self, length: int = 6):
        self.length = length
        self.observation_space = spaces.Dict({
            CAM: spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8),
            "observation.state": spaces.Box(-np.inf, np.inf, (len(STATE_NAMES),), np.float32),
            "task": spaces.Text(64),
        })
        self.action_space = spaces.Box(-1, 1, (len(ACTION_NAMES),), np.float32)

    def _obs(self) -> dict:
        state = np.zeros(len(STATE_NAMES), np.float32)
        state[:2] = self.seed_, self.t
        return {CAM: np.full((SIZE, SIZE, 3), 40 * self.t % 250, np.uint8), "observation.state": state,
                "task": INSTRUCTION}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_, self.t = seed, 0
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        success = done and self.seed_ % 2 == 0
        return self._obs(), float(success), success, done and not success, {"is_success": success}


class ScriptedAgent:
    def reset(self):
        self.steps = 0

    def act(self, obs):
        self.steps += 1
        self.phase = "reach" if self.steps <= 3 else "grasp"
        return np.full(len(ACTION_NAMES), obs["observation.state"][1] / 10, np.float32)


def make_recorder(root: Path, env: gym.Env | None = None) -> EpisodeRecorder:
    return EpisodeRecorder.for_env(env or CountingEnv(), root=root, robot_type="panda")


@pytest.fixture(autouse=True)
def _offline_and_private_cache(tmp_path, monkeypatch):
    # datasets caches every parquet file list lerobot loads; keep that out of ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_features_from_space_follow_the_feature_names():
    env = CountingEnv()
    features = features_from_space(env.observation_space, env.action_space, env.feature_names)
    assert features[CAM] == {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]}
    assert features["observation.state"]["names"] == STATE_NAMES
    assert features["action"] == {"dtype": "float32", "shape": (7,), "names": ACTION_NAMES}
    assert features[PHASE]["dtype"] == "string"
    assert "task" not in features
    bad = spaces.Dict({"observation.images.x": spaces.Box(0, 1, (8, 8), np.float32)})
    with pytest.raises(ValueError, match="observation.images.x"):
        features_from_space(bad, env.action_space)
    unnamed = features_from_space(env.observation_space, env.action_space)  # an env that names nothing
    assert unnamed["observation.state"]["names"] is None and unnamed["action"]["names"] is None
    with pytest.raises(ValueError, match="3 names for a vector of 7"):
        features_from_space(env.observation_space, env.action_space, {"action": ["a", "b", "c"]})


def test_collect_then_load_round_trip(tmp_path):
    root = tmp_path / "ds"
    with make_recorder(root) as rec:
        stats = collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=2, seed=0, progress=False)
    # seeds 0, 1, 2: the odd one fails and is not recorded
    assert (stats.episodes_saved, stats.attempts, stats.successes, stats.frames) == (2, 3, 2, 12)
    assert stats.success_rate == pytest.approx(2 / 3)

    ds = open_dataset(root)
    assert ds.meta.total_episodes == 2 and len(ds) == 12 and ds.fps == 20
    assert ds.meta.robot_type == "panda"
    frame = ds[9]  # episode 1 (seed 2), step 3
    assert frame["episode_index"] == 1 and frame["frame_index"] == 3
    assert frame["observation.state"].dtype.is_floating_point and frame["observation.state"].shape == (11,)
    assert frame["observation.state"][:2].tolist() == [2.0, 3.0], "the seed + k reset convention"
    assert frame["action"].shape == (7,) and frame["action"][0].item() == pytest.approx(0.3)
    assert frame["task"] == INSTRUCTION
    assert [ds[i][PHASE] for i in range(6)] == ["reach"] * 3 + ["grasp"] * 3
    image = frame[CAM]  # (3, H, W) float in [0, 1], decoded from the AV1 video
    assert image.shape == (3, SIZE, SIZE)
    assert abs(image.mean().item() - 120 / 255) < 0.03, "decoded frame is the one recorded at that step"
    for key in ("observation.state", "action", CAM):
        assert {"mean", "std", "min", "max", "q01", "q99"} <= set(ds.meta.stats[key])
    assert ds.meta.stats["observation.state"]["max"][1] == 5.0


def counting_env_and_agent():
    """What each parallel collection worker builds (module level: spawned workers import it)."""
    return CountingEnv(), ScriptedAgent()


def test_parallel_collection_saves_the_serial_episodes(tmp_path):
    """Two worker processes record exactly what one process records: the same attempts in the
    same order, failures filtered, and each frame's image, state, action and phase."""
    recorded = {}
    for workers in (1, 2):
        root = tmp_path / f"workers{workers}"
        with make_recorder(root) as rec:
            stats = collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=3, seed=0, progress=False,
                            workers=workers, make_env_and_agent=counting_env_and_agent)
        # seeds 0-4: the odd ones fail; no attempt past the fifth is started
        assert (stats.episodes_saved, stats.attempts, stats.frames) == (3, 5, 18)
        recorded[workers] = open_dataset(root)
    serial, parallel = recorded[1], recorded[2]
    assert len(serial) == len(parallel) == 18
    for i in range(18):
        a, b = serial[i], parallel[i]
        for key in ("observation.state", "action", CAM, "episode_index", "frame_index"):
            assert torch_equal(a[key], b[key]), (i, key)
        assert a[PHASE] == b[PHASE]
    assert [parallel[6 * e]["observation.state"][0].item() for e in range(3)] == [0.0, 2.0, 4.0]


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) if hasattr(a, "all") else a == b


def test_parallel_collection_needs_a_worker_factory(tmp_path):
    with make_recorder(tmp_path / "ds") as rec, pytest.raises(ValueError, match="make_env_and_agent"):
        collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=1, progress=False, workers=2)


class ExecutedActionsEnv(CountingEnv):
    """Remembers every action it was asked to execute."""

    def __init__(self):
        super().__init__()
        self.executed = []

    def step(self, action):
        self.executed.append(np.array(action))
        return super().step(action)


def test_action_noise_perturbs_executed_actions_but_records_clean_ones(tmp_path):
    env = ExecutedActionsEnv()
    with make_recorder(tmp_path / "ds") as rec:
        collect(env, ScriptedAgent(), rec, n_episodes=1, seed=0, action_noise=0.5, noise_dims=[0, 1, 2], progress=False)
    recorded = np.stack([open_dataset(tmp_path / "ds")[i]["action"].numpy() for i in range(6)])
    clean = np.repeat(np.arange(6)[:, None] / 10, 7, axis=1)  # ScriptedAgent: step index / 10 everywhere
    np.testing.assert_allclose(recorded, clean, atol=1e-6)
    executed = np.stack(env.executed)
    assert np.abs(executed[:, :3] - clean[:, :3]).mean() > 0.1, "dims 0-2 were perturbed"
    np.testing.assert_allclose(executed[:, 3:], clean[:, 3:], atol=1e-6)  # the others were not
    assert executed.min() >= -1 and executed.max() <= 1, "clipped to the action space"

    again = ExecutedActionsEnv()  # the same attempt seed draws the same noise
    with make_recorder(tmp_path / "ds2") as rec:
        collect(again, ScriptedAgent(), rec, n_episodes=1, seed=0, action_noise=0.5, noise_dims=[0, 1, 2],
                progress=False)
    np.testing.assert_array_equal(np.stack(again.executed), executed)
    with make_recorder(tmp_path / "ds3") as rec, pytest.raises(ValueError, match="noise_dims"):
        collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=1, action_noise=0.1, noise_dims=[7], progress=False)


def test_append_continues_the_episode_indices(tmp_path):
    root = tmp_path / "ds"
    with make_recorder(root) as rec:
        collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=1, seed=0, progress=False)
    with make_recorder(root) as rec:
        assert rec.num_episodes == 1
        collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=2, seed=10, progress=False)
        assert rec.num_episodes == 3
    ds = open_dataset(root)
    assert ds.meta.total_episodes == 3 and len(ds) == 18
    assert [ds[i]["observation.state"][0].item() for i in (0, 6, 12)] == [0.0, 10.0, 12.0]
    assert len(ds.meta.tasks) == 1, "the same instruction is one task"


def test_collect_without_success_filter_keeps_failures(tmp_path):
    with make_recorder(tmp_path / "ds") as rec:
        stats = collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=2, seed=1, success_only=False, progress=False)
    assert (stats.episodes_saved, stats.attempts, stats.successes) == (2, 2, 1)


def test_collect_gives_up_after_max_attempts(tmp_path):
    with make_recorder(tmp_path / "ds") as rec:
        stats = collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=5, seed=1, max_attempts=3, progress=False)
        assert rec.num_episodes == stats.episodes_saved == 1  # only seed 2 of 1, 2, 3 succeeds
    assert stats.attempts == 3


def test_append_with_other_features_names_the_key(tmp_path):
    root = tmp_path / "ds"
    with make_recorder(root) as rec:
        collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=1, progress=False)
    env = CountingEnv()
    env.observation_space = spaces.Dict({**env.observation_space.spaces,
                                         "observation.state": spaces.Box(-1, 1, (9,), np.float32)})
    env.feature_names = {"action": ACTION_NAMES}  # its 9-d state is unnamed
    with pytest.raises(DatasetError, match=r"'observation.state' differs.*\(11,\).*\(9,\)"):
        make_recorder(root, env)
    with make_recorder(root) as rec:  # the failed open released its lock
        assert rec.num_episodes == 1


def test_non_finite_action_discards_the_episode(tmp_path):
    root = tmp_path / "ds"
    env = CountingEnv()
    with make_recorder(root) as rec:
        obs, _ = env.reset(seed=0)
        rec.add_frame(obs, np.zeros(7, np.float32), "reach")
        with pytest.raises(ValueError, match="non-finite value in 'action'"):
            rec.add_frame(obs, np.array([0, 0, np.nan, 0, 0, 0, 0], np.float32), "reach")
        assert rec.frames_in_episode == 0
        with pytest.raises(ValueError, match="non-finite value in 'observation.state'"):
            rec.add_frame({**obs, "observation.state": np.full(11, np.inf, np.float32)}, np.zeros(7), "reach")
        with pytest.raises(ValueError, match="no frames to save"):
            rec.save_episode()
    assert not (root / "data").exists() and not list(root.glob("tmp*")), "nothing of the episode reached disk"
    with make_recorder(root) as rec:
        assert rec.num_episodes == 0


def test_ctrl_c_inside_add_frame_lands_after_the_whole_frame(tmp_path):
    from tests.conftest import hear_ctrl_c

    hear_ctrl_c()
    env = CountingEnv()
    with make_recorder(tmp_path / "ds") as rec:
        obs, _ = env.reset(seed=0)
        rec.add_frame(obs, np.zeros(7, np.float32), "reach")
        lerobot_add_frame = rec.dataset.add_frame

        def interrupted_add_frame(frame):  # Ctrl-C arrives while lerobot is buffering the frame
            os.kill(os.getpid(), signal.SIGINT)
            lerobot_add_frame(frame)

        rec.dataset.add_frame = interrupted_add_frame
        with pytest.raises(KeyboardInterrupt):
            rec.add_frame(obs, np.ones(7, np.float32), "reach")
        rec.dataset.add_frame = lerobot_add_frame
        assert rec.frames_in_episode == 2  # the interrupted frame was buffered whole, then Ctrl-C landed
        rec.add_frame(obs, np.ones(7, np.float32), "reach")
        rec.save_episode()  # every feature agrees on the episode's length
    ds = open_dataset("local/ds", root=tmp_path / "ds")
    assert ds.meta.total_frames == 3


def test_second_recorder_on_the_same_dataset_is_refused(tmp_path):
    with make_recorder(tmp_path / "ds"):
        with pytest.raises(DatasetError, match="another recorder"):
            make_recorder(tmp_path / "ds")


def test_truncated_info_json_is_restored_from_the_recorder_copy(tmp_path):
    root = tmp_path / "ds"
    with make_recorder(root) as rec:
        collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=1, progress=False)
    (root / "meta/info.json").write_text('{"codebase_version": "v3.0", "fps"')  # a kill mid-write
    with pytest.raises(DatasetError, match="info.json is unreadable"):
        open_dataset(root)
    assert any("restored" in action for action in repair_dataset(root))
    assert len(open_dataset(root)) == 6


def test_collect_real_lift_expert(tmp_path):
    pytest.importorskip("robosuite")
    from envs.tabletop import make_env
    from envs.tabletop.experts import make_expert

    env = make_env("lift", image_size=48, max_episode_steps=150)
    expert = make_expert("lift", env)
    with make_recorder(tmp_path / "lift", env) as rec:
        stats = collect(env, expert, rec, n_episodes=2, seed=0, max_attempts=4, progress=False)
    env.close()
    assert stats.episodes_saved == 2
    ds = open_dataset(tmp_path / "lift")
    assert len(ds) == stats.frames and ds.meta.total_episodes == 2
    frame = ds[len(ds) - 1]
    assert frame["task"] == "lift the red cube"
    assert frame["observation.images.agentview"].shape == frame["observation.images.wrist"].shape == (3, 48, 48)
    assert frame["observation.state"].shape == (11,) and frame["action"].shape == (7,)
    phases = {ds[i][PHASE] for i in range(ds.meta.episodes[0]["length"])}
    assert len(phases) >= 2 and "" not in phases, f"the expert's phase labels were recorded: {phases}"


def _run_child(root: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(root.parent / "hf_datasets_cache"),
           "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, __file__, mode, str(root)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


@pytest.mark.timeout(180)
def test_sigkill_mid_episode_keeps_saved_episodes(tmp_path):
    root = tmp_path / "ds"
    child = _run_child(root, "mid_episode")
    try:
        assert child.stdout.readline().strip() == "recording episode 2", "child did not reach the kill point"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    plain = LeRobotDataset("local/ds", root=root, video_backend="pyav")  # lerobot alone, no repair
    assert plain.meta.total_episodes == 2 and len(plain) == 12
    assert plain[11][CAM].shape == (3, SIZE, SIZE)
    with make_recorder(root) as rec:
        collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=1, seed=20, progress=False)
    ds = open_dataset(root)
    assert ds.meta.total_episodes == 3 and ds[12]["observation.state"][0].item() == 20.0
    assert not list(root.glob("tmp*")), "the killed encoder's scratch files were removed"


@pytest.mark.timeout(180)
def test_sigkill_inside_save_episode_rolls_back_to_the_last_saved_episode(tmp_path):
    root = tmp_path / "ds"
    child = _run_child(root, "mid_save")
    try:
        child.wait(timeout=120)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL, "the child did not die inside save_episode"

    with pytest.raises(DatasetError, match="half-written.*repair_dataset"):
        open_dataset(root)  # episode 2's data file is on disk, its metadata is not
    with make_recorder(root) as rec:  # repairs, then appends
        assert rec.num_episodes == 2
        collect(CountingEnv(), ScriptedAgent(), rec, n_episodes=1, seed=20, progress=False)
    ds = open_dataset(root)
    assert ds.meta.total_episodes == 3 and len(ds) == 18
    assert [ds[i]["observation.state"][0].item() for i in (0, 6, 12)] == [0.0, 2.0, 20.0]
    state_stats = ds.meta.stats["observation.state"]  # the killed episode (seed 4, 3 frames) is not in them
    assert state_stats["count"][0] == 18 and state_stats["mean"][0] == pytest.approx((0 + 2 + 20) / 3)


def _child(mode: str, root: str) -> None:
    """Record episodes (seeds 0, 2), then get killed while recording the third."""
    if mode == "mid_save":
        from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

        def save_then_die(self, episode_index, *args, **kwargs):
            original(self, episode_index, *args, **kwargs)  # info.json / stats.json now count it
            if episode_index == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        original = LeRobotDatasetMetadata.save_episode
        LeRobotDatasetMetadata.save_episode = save_then_die
    env, agent = CountingEnv(), ScriptedAgent()
    rec = make_recorder(Path(root), env)
    collect(env, agent, rec, n_episodes=2, seed=0, progress=False)
    obs, _ = env.reset(seed=4)
    for _ in range(3):
        rec.add_frame(obs, np.zeros(7, np.float32), "reach")
    if mode == "mid_save":
        rec.save_episode()
    print("recording episode 2", flush=True)
    signal.pause()


if __name__ == "__main__":
    _child(*sys.argv[1:])


class RealtimeThreads:
    """Polls this process's threads while in use; ``seen``: the (policy, priority) of any that
    ran at a realtime policy."""

    def __enter__(self):
        import threading

        self.seen, self._stop = set(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            for tid in os.listdir("/proc/self/task"):
                try:
                    policy = os.sched_getscheduler(int(tid))
                    if policy in (os.SCHED_FIFO, os.SCHED_RR):  # (pyarrow's I/O threads run at SCHED_BATCH)
                        self.seen.add((policy, os.sched_getparam(int(tid)).sched_priority))
                except OSError:  # the thread ended
                    pass
            self._stop.wait(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def may_raise_to_realtime() -> bool:
    """Whether this process could put a thread at SCHED_FIFO (root, or CAP_SYS_NICE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler") or not may_raise_to_realtime(),
                    reason="this process may not use realtime scheduling, so no encoder can")
def test_the_video_encoder_never_runs_at_realtime_priority(tmp_path):
    """LeRobot's AV1 encoder (SVT-AV1) starts its threads at SCHED_FIFO 99 where it may, ahead of
    a control loop recording beside it; the recorder keeps them at normal priority."""
    def record(root, guarded: bool):
        from contextlib import nullcontext

        from vla.scheduling import without_realtime_threads

        features = {CAM: {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]},
                    "action": {"dtype": "float32", "shape": (2,), "names": None}}
        frames = [{CAM: np.full((SIZE, SIZE, 3), 9 * t, np.uint8), "action": np.zeros(2, np.float32), "task": "x"}
                  for t in range(20)]
        with RealtimeThreads() as threads, (without_realtime_threads() if guarded else nullcontext()):
            ds = LeRobotDataset.create("local/rt", 20, features, root=root, streaming_encoding=True)
            for frame in frames:
                ds.add_frame(dict(frame))
            ds.save_episode()
            ds.finalize()
        return threads.seen

    assert (os.SCHED_FIFO, 99) in record(tmp_path / "bare", guarded=False)  # lerobot alone: the hazard
    assert record(tmp_path / "guarded", guarded=True) == set()
    env = CountingEnv()
    with RealtimeThreads() as threads, make_recorder(tmp_path / "recorder", env) as rec:
        obs, _ = env.reset(seed=0)
        for _ in range(6):
            rec.add_frame(obs, np.zeros(len(ACTION_NAMES), np.float32))
            obs, *_ = env.step(None)
        rec.save_episode()
    assert threads.seen == set() and os.sched_getscheduler(0) == os.SCHED_OTHER
    assert may_raise_to_realtime()  # the capability came back: a franky connection may still go realtime
