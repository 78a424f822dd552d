"""env.family=robocasa: RoboCasa's dataset layout (cameras, state, action order) checked on a stock
robosuite task with PandaOmron, since RoboCasa itself cannot be installed here; and the one-line
errors when RoboCasa or its assets are missing."""

import sys
import types

import numpy as np
import pytest

from envs.robocasa_tasks import DEFAULT_CAMERAS, INSTALL_HINT, kitchen_assets_problem, make_env, make_stock_env
from envs.robocasa_tasks.layout import (
    ACTION_DIM, DATASET_ACTION_LAYOUT, HDF5_ACTION_LAYOUT, STATE_LAYOUT, ActionLayout, field_slices, reorder
)
from vla.errors import EnvError
from vla.features import OBS_STATE, TASK, image_key

SIZE = 32
ROBOCASA_SPLITS = {"right": (0, 6), "right_gripper": (6, 7), "base": (7, 10), "torso": (10, 11)}
ROBOSUITE_DEFAULT_SPLITS = {"right": (0, 6), "torso": (6, 7), "base": (7, 10), "right_gripper": (10, 11)}
F = field_slices(DATASET_ACTION_LAYOUT)


def robocasa_installed() -> bool:
    try:
        import robocasa  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def env():
    """The adapter on stock Lift: RoboCasa's three cameras, state and action layout; hard resets
    (a new model and render context every episode) like a kitchen's."""
    e = make_stock_env("Lift", image_size=SIZE, hard_reset=True)
    yield e
    e.close()


@pytest.fixture(scope="module")
def blind():
    """No cameras (fast), soft resets, a short horizon and a fixed instruction."""
    e = make_stock_env("Lift", cameras=(), render_mode=None, max_episode_steps=3, instruction="put the cube back")
    yield e
    e.close()


def dataset_action(**fields) -> np.ndarray:
    """An action in the datasets' order; control_mode -1 (arm mode) unless given."""
    a = np.zeros(ACTION_DIM, dtype=np.float32)
    a[F["control_mode"]] = -1.0
    for name, value in fields.items():
        a[F[name]] = value
    return a


# ----------------------------------------------------------------------------- action layout
@pytest.mark.parametrize("splits", [ROBOCASA_SPLITS, ROBOSUITE_DEFAULT_SPLITS],
                         ids=["robocasa-order", "robosuite-order"])
def test_action_layout_round_trips_and_sends_each_field_to_its_part(splits):
    layout = ActionLayout(splits, 12)
    a = np.arange(1, 13, dtype=np.float64)  # distinct values: base 1-3, torso 4, mode 5, pos 6-8, rot 9-11, grip 12
    r = layout.to_robosuite(a)
    np.testing.assert_array_equal(layout.to_dataset(r), a)
    batch = np.stack([a, -a])
    np.testing.assert_array_equal(layout.to_dataset(layout.to_robosuite(batch)), batch)
    part = {name: r[slice(*ab)] for name, ab in splits.items()}
    np.testing.assert_array_equal(part["right"], [6, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(part["right_gripper"], [12])
    np.testing.assert_array_equal(part["base"], [1, 2, 3])
    np.testing.assert_array_equal(part["torso"], [4])
    assert r[-1] == 5  # HybridMobileBase's base mode is the last entry


def test_robocasa_ordering_is_the_hdf5_order_of_its_demos():
    """Under RoboCasa's body-part ordering robosuite's vector is RoboCasa's HDF5 action order, so
    the layout does what RoboCasa's own reorder_lerobot_action / reorder_hdf5_action do."""
    a = np.random.default_rng(0).uniform(-1, 1, (5, ACTION_DIM))
    layout = ActionLayout(ROBOCASA_SPLITS, 12)
    hdf5 = reorder(a, DATASET_ACTION_LAYOUT, HDF5_ACTION_LAYOUT)
    np.testing.assert_array_equal(layout.to_robosuite(a), hdf5)
    np.testing.assert_array_equal(reorder(hdf5, HDF5_ACTION_LAYOUT, DATASET_ACTION_LAYOUT), a)
    np.testing.assert_array_equal(hdf5[:, 11], a[:, 4])  # control mode last in the demos, 5th in the datasets


def test_a_robot_without_base_and_torso_is_refused():
    with pytest.raises(EnvError, match="base"):
        ActionLayout({"right": (0, 6), "right_gripper": (6, 7)}, 7)  # Panda
    with pytest.raises(EnvError, match="width 6"):
        ActionLayout({"right": (0, 7), "right_gripper": (7, 8), "base": (8, 11), "torso": (11, 12)}, 13)


def test_a_fixed_base_robot_is_refused_by_the_env():
    with pytest.raises(EnvError, match="'base' part"):
        make_stock_env("Lift", robot="Panda", cameras=(), render_mode=None)


def test_layout_agrees_with_robosuites_own_action_vector(env):
    a = np.random.default_rng(1).uniform(-1, 1, ACTION_DIM)
    cc = env.robosuite_env.robots[0].composite_controller
    by_part = {"right": np.concatenate([a[F["end_effector_position"]], a[F["end_effector_rotation"]]]),
               "right_gripper": a[F["gripper_close"]], "base": a[F["base_motion"]][:3],
               "torso": a[F["base_motion"]][3:], "base_mode": a[F["control_mode"]][0]}
    np.testing.assert_allclose(env.layout.to_robosuite(a), cc.create_action_vector(by_part))
    assert dict(cc._action_split_indexes) == ROBOCASA_SPLITS  # RoboCasa's kitchens give the same order


# ----------------------------------------------------------------------------- observations
def test_observation_has_robocasas_cameras_and_state_layout(env):
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info == {"is_success": False}
    assert set(obs) == {*(image_key(c) for c in DEFAULT_CAMERAS), OBS_STATE, TASK}
    assert obs[TASK] == "lift the red cube" and env.action_space.shape == (12,)
    raw = env.robosuite_env._get_observations(force_update=True)
    expected = np.concatenate([raw[key] for _, key, _ in STATE_LAYOUT])
    assert obs[OBS_STATE].shape == (16,) and obs[OBS_STATE].dtype == np.float32
    np.testing.assert_allclose(obs[OBS_STATE], expected, atol=1e-6)
    np.testing.assert_allclose(obs[OBS_STATE][0:3], raw["robot0_base_pos"], atol=1e-6)
    np.testing.assert_allclose(obs[OBS_STATE][7:10], raw["robot0_base_to_eef_pos"], atol=1e-6)
    np.testing.assert_allclose(obs[OBS_STATE][14:16], raw["robot0_gripper_qpos"], atol=1e-6)


def test_cameras_render_upright_at_the_right_size(env):
    obs, _ = env.reset(seed=0)
    sim = env.robosuite_env.sim
    for cam in DEFAULT_CAMERAS:
        frame = obs[image_key(cam)]
        assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, sim.render(width=SIZE, height=SIZE, camera_name=cam)[::-1])
    for cam in ("robot0_agentview_left", "robot0_agentview_right"):
        rows = obs[image_key(cam)].astype(float).mean(axis=(1, 2))  # the bright floor below the dark backdrop
        assert rows[-SIZE // 4:].mean() > rows[: SIZE // 4].mean() + 30
    left, right = obs[image_key("robot0_agentview_left")], obs[image_key("robot0_agentview_right")]
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 5  # two views, not one camera twice


# ----------------------------------------------------------------------------- actions move the robot
def run(env, action, steps=10):
    for _ in range(steps):
        obs, *_ = env.step(action)
    return obs[OBS_STATE]


def test_base_motion_moves_the_base_and_arm_actions_move_the_eef(blind):
    s0 = blind.reset(seed=0)[0][OBS_STATE]
    s1 = run(blind, dataset_action(base_motion=[1, 0, 0, 0]))
    assert s1[0] - s0[0] > 0.05                               # the base drove forward (world x)
    np.testing.assert_allclose(s1[7:10], s0[7:10], atol=0.02)  # the arm stayed put relative to the base

    s0 = blind.reset(seed=0)[0][OBS_STATE]
    s1 = run(blind, dataset_action(end_effector_position=[1, 0, 0]))
    assert s1[7] - s0[7] > 0.05                               # eef forward in the base frame
    np.testing.assert_allclose(s1[0:3], s0[0:3], atol=0.005)  # the base did not move

    blind.reset(seed=0)
    torso = blind.robosuite_env.robots[0]._ref_joints_indexes_dict["torso"]
    q0 = blind.robosuite_env.sim.data.qpos[torso].copy()
    run(blind, dataset_action(base_motion=[0, 0, 0, 1]), steps=5)
    assert (blind.robosuite_env.sim.data.qpos[torso] - q0).item() > 0.01  # base_motion[3] lifts the torso

    s0 = blind.reset(seed=0)[0][OBS_STATE]
    s1 = run(blind, dataset_action(gripper_close=1.0), steps=5)
    assert s1[14] < s0[14] - 0.005  # the fingers closed


def test_instruction_override_and_truncation(blind):
    obs, _ = blind.reset(seed=0)
    assert obs[TASK] == "put the cube back" and set(obs) == {OBS_STATE, TASK}
    ends = [blind.step(dataset_action())[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]  # truncated at max_episode_steps


def test_hard_resets_rebuild_cameras_and_render_settings(env):
    sims = []
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        sims.append(env.robosuite_env.sim)
        model = sims[-1].model
        assert not model.light_castshadow.any()  # the recompiled model got the CPU render settings again
        assert set(DEFAULT_CAMERAS) <= set(model.camera_names)
        assert obs[image_key("robot0_agentview_left")].std() > 10  # a real frame, not a blank buffer
    assert sims[0] is not sims[1]  # a new simulation each episode


def test_seeds_fix_the_scene(env, blind):
    for e in (env, blind):  # soft and hard resets
        a, _ = e.reset(seed=3)
        b, _ = e.reset(seed=3)
        c, _ = e.reset(seed=4)
        for key in a:
            if key != TASK:
                np.testing.assert_array_equal(a[key], b[key])
        assert not np.allclose(a[OBS_STATE], c[OBS_STATE])  # joint noise differs between seeds
    cube = env.robosuite_env.sim.data.body_xpos[env.robosuite_env.cube_body_id].copy()
    env.reset(seed=3)
    assert not np.allclose(cube, env.robosuite_env.sim.data.body_xpos[env.robosuite_env.cube_body_id])


# ----------------------------------------------------------------------------- without RoboCasa
@pytest.mark.skipif(robocasa_installed(), reason="RoboCasa is installed")
def test_make_env_without_robocasa_says_how_to_install_it():
    with pytest.raises(EnvError) as e:
        make_env("PnPCounterToCab")
    msg = str(e.value)
    assert msg == INSTALL_HINT and "\n" not in msg
    for step in ("https://github.com/ARISE-Initiative/robosuite", "https://github.com/robocasa/robocasa",
                 "pip install -e", "robocasa.scripts.setup_macros", "robocasa.scripts.download_kitchen_assets"):
        assert step in msg


def test_missing_kitchen_assets_are_an_env_error(tmp_path, monkeypatch):
    fake = types.ModuleType("robocasa")
    fake.__path__ = [str(tmp_path)]  # an installed package without its downloaded assets
    monkeypatch.setitem(sys.modules, "robocasa", fake)
    with pytest.raises(EnvError, match="kitchen assets are missing.*download_kitchen_assets"):
        make_env("PnPCounterToCab")
    assets = tmp_path / "models" / "assets"
    for sub in ("textures", "fixtures", "objects/lightwheel"):
        (assets / sub).mkdir(parents=True)
        (assets / sub / "x").write_text("")
    assert kitchen_assets_problem(str(tmp_path)) is None


def test_task_names_of_both_robocasa_versions_resolve():
    from envs.robocasa_tasks.env import resolve_kitchen_task

    assert resolve_kitchen_task("PnPCounterToCab", {"PickPlaceCounterToCabinet"}) == "PickPlaceCounterToCabinet"
    assert resolve_kitchen_task("PickPlaceCounterToCabinet", {"PnPCounterToCab"}) == "PnPCounterToCab"
    with pytest.raises(EnvError, match="OpenDrawer"):
        resolve_kitchen_task("OpenDrawr", {"OpenDrawer", "CloseDrawer"})


@pytest.mark.skipif(robocasa_installed(), reason="RoboCasa is installed")
def test_cli_eval_and_collect_exit_2_with_the_install_hint(tmp_path, capsys, trained_run):
    from vla.cli import main

    code = main(["collect", "env=robocasa", f"dataset.root={tmp_path / 'd'}"])
    err = capsys.readouterr().err
    assert code == 2 and "RoboCasa is not installed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()

    code = main(["eval", "env=robocasa", f"eval.checkpoint={trained_run}", "eval.episodes=2",
                 f"eval.output_dir={tmp_path / 'e'}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vla eval: error:")]
    assert code == 2 and len(errors) == 1 and "RoboCasa is not installed" in errors[0]
