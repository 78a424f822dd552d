"""Meta-World's Sawyer tasks (env.family=metaworld) on the real simulator: the observation
convention, instructions, task sets cycled by seed, determinism, Meta-World's scripted experts,
and the CLI paths that use them (collect, train, eval's per-task report, bad input)."""

import json

import numpy as np
import pytest

from envs.metaworld_tasks import INSTRUCTIONS, make_env, resolve_tasks, task_sets
from envs.metaworld_tasks.env import ACTION_NAMES, ENV_STATE_NAMES, STATE_NAMES
from envs.metaworld_tasks.experts import make_expert
from tests.conftest import TINY
from vla.cli import main
from vla.errors import ConfigError, EnvError
from vla.features import ACTION, OBS_ENV_STATE, OBS_STATE, TASK, image_key

SIZE = 48
TWO_TASKS = "reach-v3,push-v3"


@pytest.fixture(scope="module")
def reach():
    env = make_env("reach-v3", image_size=SIZE)
    yield env
    env.close()


def blind(task: str):
    """An env without cameras: the experts and the seeding need no images."""
    return make_env(task, cameras=(), render_mode=None)


def run_expert(env, expert, seed: int) -> tuple[bool, int, str]:
    """(success, steps, the task info named) of one expert episode from reset(seed)."""
    obs, info = env.reset(seed=seed)
    expert.reset()
    steps = 0
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        steps += 1
        if terminated or truncated:
            return info["is_success"], steps, info["task_name"]


def expert_episodes(task: str, seeds) -> list[tuple[bool, int, str]]:
    """`run_expert` on each seed, in a camera-less env of ``task``."""
    env = blind(task)
    try:
        expert = make_expert(task, env)
        assert expert.phase is None  # Meta-World's policies name no sub-tasks
        return [run_expert(env, expert, seed) for seed in seeds]
    finally:
        env.close()


def test_observation_follows_the_convention(reach):
    obs, info = reach.reset(seed=0)
    assert reach.observation_space.contains(obs)
    assert set(obs) == {image_key("corner"), image_key("wrist"), OBS_STATE, OBS_ENV_STATE, TASK}
    assert obs[image_key("wrist")].shape == (SIZE, SIZE, 3) and obs[image_key("corner")].dtype == np.uint8
    assert obs[TASK] == "move the gripper to the goal"
    assert info == {"is_success": False, "task_name": "reach-v3"}
    assert reach.action_space.shape == (4,) and reach.metadata["render_fps"] == 80
    # state = Meta-World's hand position | gripper opening; environment state = its object slots | goal
    raw = reach.raw_observation
    np.testing.assert_allclose(obs[OBS_STATE], raw[:4], atol=1e-6)
    np.testing.assert_allclose(obs[OBS_ENV_STATE], np.concatenate([raw[4:18], raw[36:39]]), atol=1e-6)
    np.testing.assert_allclose(obs[OBS_STATE][:3], reach.sim.data.body("hand").xpos, atol=1e-6)
    np.testing.assert_allclose(obs[OBS_ENV_STATE][-3:], reach.sim._target_pos, atol=1e-6)  # the goal is visible
    names = reach.feature_names
    assert names == {OBS_STATE: STATE_NAMES, OBS_ENV_STATE: ENV_STATE_NAMES, ACTION: ACTION_NAMES}
    assert [len(names[k]) for k in (OBS_STATE, OBS_ENV_STATE, ACTION)] == [4, 17, 4]


def test_actions_move_the_hand_by_centimetres(reach):
    obs, _ = reach.reset(seed=0)
    for _ in range(10):
        obs, reward, terminated, truncated, info = reach.step(np.array([0.0, 0.0, 1.0, -1.0], dtype=np.float32))
    rise = obs[OBS_STATE][2] - reach.reset(seed=0)[0][OBS_STATE][2]
    assert 0.05 < rise < 0.11  # 10 steps of +1 cm targets; the welded hand lags its target a little
    assert reward >= 0 and not terminated and not truncated and info["task_name"] == "reach-v3"
    with pytest.raises(ValueError, match="expected"):
        reach.step(np.zeros(7, dtype=np.float32))


def finger_row(image: np.ndarray) -> float:
    """Mean row of the cyan finger pads in an image."""
    rgb = image.astype(int)
    cyan = (rgb[..., 0] < 100) & (rgb[..., 1] > 150) & (rgb[..., 2] > 150)
    assert cyan.any(), "no finger pad in view"
    return float(np.nonzero(cyan)[0].mean())


def test_corner_images_are_upright():
    """Meta-World's corner cameras are defined upside down; turned, raising the hand raises it in the image."""
    cameras = ("corner", "corner2", "corner3")
    env = make_env("reach-v3", cameras=cameras, image_size=96)
    try:
        before, _ = env.reset(seed=0)
        for _ in range(15):
            after, *_ = env.step(np.array([0.0, 0.0, 1.0, -1.0], dtype=np.float32))
        for camera in cameras:
            assert finger_row(after[image_key(camera)]) < finger_row(before[image_key(camera)]) - 2, camera
    finally:
        env.close()


def test_every_task_has_an_instruction_and_the_official_sets():
    from metaworld import env_dict

    assert set(INSTRUCTIONS) == set(env_dict.ALL_V3_ENVIRONMENTS) and len(INSTRUCTIONS) == 50
    assert len(set(INSTRUCTIONS.values())) == 50  # no two tasks told the same
    assert all(text and text == text.strip() and text[0].islower() and len(text) < 80 for text in INSTRUCTIONS.values())
    sets = task_sets()
    assert sets["MT10"][:3] == ["reach-v3", "push-v3", "pick-place-v3"] and len(sets["MT10"]) == 10
    assert len(sets["MT50"]) == 50 and set(sets["MT10"]) < set(sets["MT25"]) < set(sets["MT50"])
    assert resolve_tasks(TWO_TASKS) == ["reach-v3", "push-v3"] and resolve_tasks("MT10") == sets["MT10"]


def test_a_set_runs_task_seed_mod_n_with_its_instruction():
    env = blind("MT10")
    try:
        mt10 = task_sets()["MT10"]
        for seed in range(100_000, 100_012):  # vla eval's first episodes: seed + k
            obs, info = env.reset(seed=seed)
            assert info["task_name"] == env.task_name == mt10[seed % 10]
            assert obs[TASK] == INSTRUCTIONS[mt10[seed % 10]]
        _, info = env.reset()  # without a seed: the task after the last one
        assert info["task_name"] == mt10[(100_011 + 1) % 10]
    finally:
        env.close()


def test_a_seed_fixes_the_scene_across_task_switches():
    env = make_env(TWO_TASKS, cameras=("corner",), image_size=32)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(20, 4)).astype(np.float32)

    def episode(seed):
        obs, info = env.reset(seed=seed)
        trajectory = [obs[OBS_ENV_STATE]]
        for action in actions:
            obs, *_ = env.step(action)
            trajectory.append(obs[OBS_STATE])
        return info["task_name"], np.concatenate(trajectory), obs[image_key("corner")]

    try:
        first = episode(3)
        assert episode(4)[0] == "reach-v3" and first[0] == "push-v3"  # seed 4 switched to the other task
        again = episode(3)
        assert again[0] == "push-v3"
        np.testing.assert_array_equal(first[1], again[1])
        np.testing.assert_array_equal(first[2], again[2])
        other = episode(5)  # the same task, another scene
        assert other[0] == "push-v3" and not np.allclose(other[1][:17], first[1][:17])
        reused = episode(3)  # the simulation the last episode left, not a fresh one: the same episode
        np.testing.assert_array_equal(first[1], reused[1])
        np.testing.assert_array_equal(first[2], reused[2])
    finally:
        env.close()


@pytest.mark.parametrize("task", ["reach-v3", "drawer-open-v3", "pick-place-v3"])
def test_the_bundled_expert_solves_its_task(task):
    results = expert_episodes(task, range(3))
    assert all(success for success, _, _ in results), results
    assert all(name == task and steps < 200 for _, steps, name in results), results


def test_the_expert_follows_the_task_of_each_episode():
    results = expert_episodes(TWO_TASKS, range(4))
    assert [name for _, _, name in results] == ["reach-v3", "push-v3"] * 2 and all(s for s, _, _ in results)


def test_the_expert_refuses_mistakes_and_other_tasks():
    env = blind("reach-v3")
    try:
        with pytest.raises(ConfigError, match="collect.grasp_mistakes=0.5.*cannot inject mistakes"):
            make_expert("reach-v3", env, mistakes=0.5, place_mistakes=0.0)
        with pytest.raises(ValueError, match="same tasks"):
            make_expert("push-v3", env)
    finally:
        env.close()


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="reach-v4"), r"unknown Meta-World task 'reach-v4'; a task is one of \[.*'reach-v3'.*MT10"),
    (dict(task="reach-v3,nope"), "unknown Meta-World task 'nope'"),
    (dict(task="reach-v3,reach-v3"), "names a task twice"),
    (dict(task="reach-v3", cameras=("ceiling",)), "unknown camera 'ceiling'.*gripperPOV"),
    (dict(task="MT10", instruction="do it"), "each with its own"),
])
def test_bad_settings_name_the_choices(kwargs, message):
    with pytest.raises(EnvError, match=message) as e:
        make_env(**{"render_mode": None, **kwargs})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override, says", [
    ("env.task=reach-v4", "unknown Meta-World task 'reach-v4'; a task is one of ["),
    ("env.robot=Panda", "Meta-World has one robot, the Sawyer"),
    ("env.control_freq=20", "Meta-World steps at 80 Hz"),
    ("env.cameras=[front]", "unknown camera 'front'"),
    ("collect.grasp_mistakes=0.5", "cannot inject mistakes"),
])
def test_bad_input_through_the_cli_is_one_line_and_exit_2(override, says, tmp_path, capsys):
    root = tmp_path / "ds"
    code = main(["collect", "env=metaworld", override, "collect.episodes=1", f"dataset.root={root}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("vla collect: error: ") and says in err[0], err[0]
    assert not root.exists()


def test_collect_train_and_eval_a_task_set_through_the_cli(tmp_path, capsys):
    from vla.data.source import open_dataset

    root, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    two = f"env.task='{TWO_TASKS}'"
    assert main(["collect", "env=metaworld", two, "env.image_size=32", "collect.episodes=2",
                 f"dataset.root={root}", "dataset.repo_id=local/mw"]) == 0
    ds = open_dataset("local/mw", root=root)
    features = ds.meta.features
    assert ds.meta.total_episodes == 2 and ds.meta.fps == 80
    assert tuple(features[image_key("corner")]["shape"]) == (32, 32, 3) and image_key("wrist") in features
    assert features[OBS_STATE]["names"] == STATE_NAMES and features[ACTION]["names"] == ACTION_NAMES
    assert tuple(features[OBS_ENV_STATE]["shape"]) == (17,)
    first_of_second = ds.meta.episodes[0]["length"]
    assert ds[0]["task"] == INSTRUCTIONS["reach-v3"] and ds[first_of_second]["task"] == INSTRUCTIONS["push-v3"]

    assert main(["train", "env=metaworld", f"dataset.root={root}", "dataset.repo_id=local/mw", f"output_dir={run}",
                 "train.steps=2", "train.save_every=2", "policy.backbone.cameras=[corner,wrist]", *TINY]) == 0

    capsys.readouterr()
    assert main(["eval", "env=metaworld", two, "env.image_size=32", f"eval.checkpoint={run}", "eval.episodes=4",
                 "eval.n_envs=2", "env.max_episode_steps=5", "eval.max_videos=1", f"eval.output_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["task"] for r in report["episodes_detail"]] == ["reach-v3", "push-v3"] * 2  # seed 100000 + k: k mod 2
    assert report["per_task"].keys() == {"reach-v3", "push-v3"}
    assert all(r["episodes"] == 2 for r in report["per_task"].values())
    table = (out / "report.md").read_text()
    assert "| reach-v3 | 2 |" in table and "| push-v3 | 2 |" in table
    import av

    video, = (out / "videos").glob("*.mp4")
    with av.open(str(video)) as container:  # in real time: Meta-World's 80 Hz, not the tabletop's 20
        assert container.streams.video[0].average_rate == 80
