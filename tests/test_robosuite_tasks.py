"""robosuite's own tasks behind the gymnasium API: conventions, seeding, robots, controllers,
cameras, scripted experts, and the CLI paths that use them (collect, eval)."""

import json

import gymnasium as gym
import numpy as np
import pytest

from envs.robosuite_tasks import TASKS, gym_id, make_env
from envs.robosuite_tasks.env import quat_xyzw_to_matrix
from envs.robosuite_tasks.experts import EXPERTS, make_expert
from vla.errors import EnvError
from vla.features import OBS_ENV_STATE, OBS_STATE, TASK, image_key

SIZE = 48


@pytest.fixture(scope="module")
def lift():
    env = make_env("Lift", image_size=SIZE)
    yield env
    env.close()


def run_expert(env, expert, seed: int) -> tuple[bool, list[str], dict[str, int]]:
    """(success, the phase label of every step, the step at which each stage was first reached)."""
    obs, info = env.reset(seed=seed)
    assert not any(info.get("stages", {}).values())
    expert.reset()
    phases, first_reached = [], {}
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        phases.append(expert.phase)
        for stage, now in info.get("stages", {}).items():
            if now:
                first_reached.setdefault(stage, len(phases))
        if terminated or truncated:
            return info["is_success"], phases, first_reached


def test_observation_follows_the_tabletop_convention(lift):
    obs, info = lift.reset(seed=0)
    assert lift.observation_space.contains(obs)
    assert set(obs) == {image_key("agentview"), image_key("wrist"), OBS_STATE, OBS_ENV_STATE, TASK}
    assert obs[image_key("wrist")].shape == (SIZE, SIZE, 3)
    assert obs[TASK] == "lift the red cube"
    assert info == {"is_success": False, "stages": {"grasped": False, "lifted": False, "success": False}}
    assert lift.action_space.shape == (7,)
    # state = robot0_eef_pos | rot6d(robot0_eef_quat) | gripper qpos, robosuite's own observables
    raw = lift.robosuite_env._get_observations(force_update=True)
    np.testing.assert_allclose(obs[OBS_STATE][:3], raw["robot0_eef_pos"], atol=1e-6)
    rotation = quat_xyzw_to_matrix(raw["robot0_eef_quat"])
    np.testing.assert_allclose(obs[OBS_STATE][3:9], np.concatenate([rotation[:, 0], rotation[:, 1]]), atol=1e-6)
    np.testing.assert_allclose(obs[OBS_STATE][9:], raw["robot0_gripper_qpos"], atol=1e-6)
    np.testing.assert_allclose(obs[OBS_ENV_STATE], raw["object-state"], atol=1e-6)


def test_a_lift_that_succeeds_has_lifted(lift):
    """robosuite's Lift succeeds with the cube's bottom ~1.9 cm up, a hair under the 2 cm stage, and
    an episode ends on success: the stages must not report a success that never lifted."""
    lift.reset(seed=0)
    env = lift.robosuite_env
    cube = env.model.mujoco_objects[0]
    pose = env.sim.data.get_joint_qpos(cube.joints[0]).copy()
    pose[2] = env.model.mujoco_arena.table_offset[2] + 0.0405  # the centre just past robosuite's 4 cm
    env.sim.data.set_joint_qpos(cube.joints[0], pose)
    env.sim.forward()
    reached = lift.stages()
    assert reached["success"] and reached["lifted"]


def test_images_are_upright_and_wrist_is_the_eye_in_hand_camera(lift):
    obs, _ = lift.reset(seed=0)
    sim = lift.robosuite_env.sim
    direct = sim.render(width=SIZE, height=SIZE, camera_name="robot0_eye_in_hand")[::-1]
    np.testing.assert_array_equal(obs[image_key("wrist")], direct)
    # upright agentview: the floor / table (bright, low rows) is below the dark backdrop's top rows
    agent = obs[image_key("agentview")].astype(float).mean(axis=(1, 2))
    assert agent[-SIZE // 4:].mean() != pytest.approx(agent[: SIZE // 4].mean(), abs=1.0)


def test_seeds_fix_the_scene_and_differ_between_seeds(lift):
    a, _ = lift.reset(seed=3)
    b, _ = lift.reset(seed=3)
    c, _ = lift.reset(seed=4)
    np.testing.assert_array_equal(a[OBS_ENV_STATE], b[OBS_ENV_STATE])
    np.testing.assert_array_equal(a[image_key("agentview")], b[image_key("agentview")])
    assert not np.allclose(a[OBS_ENV_STATE][:3], c[OBS_ENV_STATE][:3])


@pytest.mark.parametrize("task", sorted(EXPERTS))
def test_scripted_experts_solve_their_tasks(task):
    env = make_env(task, cameras=(), render_mode=None)
    expert = make_expert(task, env)
    try:
        results = [run_expert(env, expert, seed) for seed in range(3)]
    finally:
        env.close()
    assert all(success for success, _, _ in results), [len(p) for _, p, _ in results]
    noun = {"Lift": "the red cube", "Stack": "the red cube", "PickPlaceCan": "the can"}[task]
    labels = list(dict.fromkeys(results[0][1]))  # in order, once each
    assert labels[:3] == [f"reach {noun}", f"grasp {noun}", f"lift {noun}"]
    # The stages an evaluation reports are all reached, one after another, in the order listed.
    stages = {"Lift": ["grasped", "lifted", "success"]}.get(task, ["grasped", "lifted", "over_target", "success"])
    for _, _, first_reached in results:
        assert list(first_reached) == stages, first_reached
        assert list(first_reached.values()) == sorted(first_reached.values())


@pytest.mark.parametrize("task", ["NutAssemblySquare", "Door", "PickPlaceMilk"])
def test_other_stock_tasks_run_with_instructions(task):
    env = make_env(task, cameras=("agentview",), image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(np.zeros(7, dtype=np.float32))
        assert env.observation_space.contains(obs)
        assert obs[TASK] == TASKS[task].instruction and not info["is_success"] and reward == 0.0
        assert "stages" not in info  # no single object to pick: no stages, rather than made-up ones
    finally:
        env.close()


def test_any_robot_and_controller():
    env = make_env("Lift", robot="Sawyer", controller="JOINT_POSITION", cameras=(), render_mode=None)
    try:
        assert env.action_space.shape == (8,)  # 7 joint deltas | gripper
        obs, _ = env.reset(seed=0)
        q0 = env.robosuite_env.robots[0]._joint_positions.copy()
        action = np.zeros(8, dtype=np.float32)
        action[1] = 1.0  # joint 2 up by 0.05 rad per step (the base joint barely moves at the default gain)
        for _ in range(5):
            obs, *_ = env.step(action)
        moved = env.robosuite_env.robots[0]._joint_positions - q0
        assert moved[1] > 0.02 and np.abs(np.delete(moved, 1)).max() < 0.01
        assert obs[OBS_STATE].shape == (9 + 2,)  # Sawyer's Rethink gripper: 2 finger joints
    finally:
        env.close()


def test_gymnasium_ids_are_registered():
    env = gym.make(gym_id("Stack"), cameras=(), render_mode=None)
    try:
        obs, _ = env.reset(seed=0)
        assert obs[TASK] == "stack the red cube on the green cube"
    finally:
        env.close()


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="Juggle"), "Lift"),
    (dict(task="Lift", cameras=("ceiling",)), "frontview"),
    (dict(task="Lift", robot="R2D2"), "Panda"),
    (dict(task="Lift", controller="MAGIC"), "OSC_POSE"),
    (dict(task="TwoArmLift"), "single-arm"),
])
def test_bad_settings_name_the_choices(kwargs, message):
    with pytest.raises(EnvError, match=message):
        make_env(**{"render_mode": None, **kwargs})


def test_no_expert_for_a_task_without_one():
    env = make_env("Door", cameras=(), render_mode=None)
    try:
        with pytest.raises(EnvError, match="PickPlaceCan"):
            make_expert("Door", env)
    finally:
        env.close()


def test_cli_collects_and_evaluates_a_robosuite_task(tmp_path, trained_run, capsys):
    from vla.cli import main
    from vla.data.source import open_dataset

    root = tmp_path / "data"
    assert main(["collect", "env=robosuite-lift", "env.image_size=32", "collect.episodes=1",
                 f"dataset.root={root}", "dataset.repo_id=local/rs_lift"]) == 0
    ds = open_dataset("local/rs_lift", root=root)
    assert ds.meta.total_episodes == 1 and ds[0]["task"] == "lift the red cube"
    assert ds.meta.features[OBS_STATE]["shape"] == (11,) and image_key("wrist") in ds.meta.features
    # the tabletop checkpoint has the same features, so it runs here: vectorized, pinned seeds
    out = tmp_path / "eval"
    assert main(["eval", "env=robosuite-lift", f"eval.checkpoint={trained_run}", "eval.episodes=2", "eval.n_envs=2",
                 "eval.max_videos=0", "env.max_episode_steps=5", f"eval.output_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["seed"] for r in report["episodes_detail"]] == [100000, 100001]
    assert report["protocol"]["env"]["family"] == "robosuite" and "Lift" in report["per_task"]
