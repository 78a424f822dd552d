"""The tabletop tasks: gymnasium contract, seeding, images, success predicates, experts.

Building a robosuite env takes seconds, so envs are module-scoped and shared between tests.
"""

import gc
from functools import partial

import gymnasium as gym
import numpy as np
import pytest

from envs.tabletop import TASKS, gym_id, make_env
from envs.tabletop.experts import make_expert
from envs.tabletop.tasks import BIN_SIZE, BIN_WALL, CUBE_HALF_SIZE
from envs.tabletop.env import ENV_STATE_NAMES
from vla.features import OBS_ENV_STATE, OBS_STATE, STATE_NAMES, TASK, image_key

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def camera_env():
    env = make_env("lift", image_size=IMAGE_SIZE)
    yield env
    env.close()


@pytest.fixture(scope="module")
def blind_envs():
    """One camera-less env per task, for predicates and experts (no rendering cost)."""
    envs = {task: make_env(task, cameras=(), render_mode=None) for task in TASKS}
    yield envs
    for env in envs.values():
        env.close()


def object_positions(env) -> np.ndarray:
    objects = env.unwrapped.privileged_state()["objects"]
    return np.stack([objects[name]["pos"] for name in sorted(objects)])


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ValueError, match="lift"):
        make_env("juggle")


def test_unknown_camera_is_an_error():
    with pytest.raises(ValueError, match="agentview"):
        make_env("lift", cameras=("ceiling",))


def test_observation_matches_its_space(camera_env):
    obs, info = camera_env.reset(seed=0)
    space = camera_env.observation_space
    assert set(obs) == set(space.spaces) == {image_key("agentview"), image_key("wrist"), OBS_STATE, OBS_ENV_STATE, TASK}
    assert space.contains(obs)
    for camera in ("agentview", "wrist"):
        image = obs[image_key(camera)]
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
    state = obs[OBS_STATE]
    assert state.shape == (len(STATE_NAMES),) and state.dtype == np.float32
    assert obs[TASK] == TASKS["lift"].instruction
    assert info == {"is_success": False, "stages": {"grasped": False, "lifted": False, "success": False}}
    assert camera_env.action_space.shape == (7,) and camera_env.action_space.dtype == np.float32


def test_state_holds_eef_pose_and_gripper(camera_env):
    obs, _ = camera_env.reset(seed=0)
    truth = camera_env.unwrapped.privileged_state()
    state = obs[OBS_STATE]
    np.testing.assert_allclose(state[:3], truth["eef_pos"], atol=1e-6)
    np.testing.assert_allclose(state[3:6], truth["eef_rot"][:, 0], atol=1e-6)  # column 0 first
    np.testing.assert_allclose(state[6:9], truth["eef_rot"][:, 1], atol=1e-6)
    np.testing.assert_allclose(state[9:], truth["gripper_qpos"], atol=1e-6)


def test_environment_state_holds_object_poses_up_to_the_square_symmetry(blind_envs):
    env = blind_envs["lift"]
    obs, _ = env.reset(seed=3)
    names = {name: i for i, name in enumerate(ENV_STATE_NAMES)}
    red = env.unwrapped.privileged_state()["objects"]["red_cube"]["pos"]
    x = names["red_cube_x"]
    np.testing.assert_allclose(obs[OBS_ENV_STATE][x:x + 3], red, atol=1e-6)

    def yaw_features(angle):
        half = angle / 2  # quaternion (w, x, y, z) of a rotation by `angle` about z
        env.unwrapped.scene.set_object_pose("red_cube", red, (np.cos(half), 0.0, 0.0, np.sin(half)))
        state = env.unwrapped._environment_state()
        return state[names["red_cube_cos4yaw"]], state[names["red_cube_sin4yaw"]]

    # a quarter turn looks the same
    np.testing.assert_allclose(yaw_features(0.3), yaw_features(0.3 + np.pi / 2), atol=1e-5)
    np.testing.assert_allclose(yaw_features(np.pi / 4), (-1.0, 0.0), atol=1e-5)  # 45 degrees is the far end


def test_images_are_upright_and_not_blank(camera_env):
    obs, _ = camera_env.reset(seed=0)
    agentview = obs[image_key("agentview")].mean(axis=-1)
    wrist = obs[image_key("wrist")].mean(axis=-1)
    third = IMAGE_SIZE // 3
    assert agentview.std() > 20 and wrist.std() > 20
    # Agentview looks at the robot across the table: bright table below, dark floor above.
    assert agentview[-third:].mean() > agentview[:third].mean() + 40
    # The wrist camera sees the grey fingers at the bottom and the white table beyond them.
    assert wrist[:third].mean() > wrist[-third:].mean() + 40


def test_frames_are_antialiased(camera_env):
    """4x multisampling: a cube's partly covered edge pixels carry its sub-pixel position."""
    assert camera_env.unwrapped.scene.sim._render_context_offscreen.con.offSamples == 4


def test_render_returns_the_agentview_frame(camera_env):
    obs, _ = camera_env.reset(seed=0)
    np.testing.assert_array_equal(camera_env.render(), obs[image_key("agentview")])


def test_envs_sharing_a_process_render_their_own_scenes(camera_env):
    agentview = image_key("agentview")
    first = camera_env.reset(seed=0)[0][agentview]
    closed = make_env("stack", image_size=IMAGE_SIZE, cameras=("agentview",))
    dropped = make_env("stack", image_size=IMAGE_SIZE, cameras=("agentview",))
    other_frame = closed.reset(seed=5)[0][agentview]
    dropped.reset(seed=5)
    np.testing.assert_array_equal(camera_env.reset(seed=0)[0][agentview], first)
    closed.close()
    del dropped  # garbage-collected without close(), while camera_env's GL context is current
    gc.collect()
    np.testing.assert_array_equal(camera_env.reset(seed=0)[0][agentview], first)
    assert np.abs(other_frame.astype(int) - first).mean() > 1


def test_render_size_renders_a_separate_frame():
    env = make_env("lift", cameras=(), render_size=80)
    env.reset(seed=0)
    frame = env.render()
    env.close()
    assert frame.shape == (80, 80, 3) and frame.dtype == np.uint8 and frame.std() > 20


def test_reset_is_determined_by_the_seed(camera_env):
    first, _ = camera_env.reset(seed=7)
    positions = object_positions(camera_env)
    camera_env.step(camera_env.action_space.sample())
    again, _ = camera_env.reset(seed=7)
    np.testing.assert_array_equal(object_positions(camera_env), positions)
    np.testing.assert_array_equal(again[OBS_STATE], first[OBS_STATE])  # same joint noise
    np.testing.assert_array_equal(again[image_key("agentview")], first[image_key("agentview")])
    camera_env.reset(seed=8)
    assert np.abs(object_positions(camera_env) - positions).max() > 0.01


def test_zero_action_keeps_the_scene_still(camera_env):
    obs, _ = camera_env.reset(seed=1)
    positions = object_positions(camera_env)
    for _ in range(10):
        obs, reward, terminated, truncated, info = camera_env.step(np.zeros(7, np.float32))
        assert reward == 0.0 and not terminated and not truncated and not info["is_success"]
        assert not any(info["stages"].values())
    assert np.isfinite(obs[OBS_STATE]).all()
    assert np.abs(object_positions(camera_env) - positions).max() < 0.005


def test_episode_truncates_at_max_steps():
    env = make_env("lift", cameras=(), render_mode=None, max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(7))[3] for _ in range(3)]
    env.close()
    assert flags == [False, False, True]


def settle(env, steps: int = 10) -> bool:
    """Step with a zero action; True if success held on the last step."""
    for _ in range(steps):
        _, reward, terminated, _, info = env.step(np.zeros(7))
    return info["is_success"] and reward == 1.0 and terminated


def test_lift_success_needs_the_red_cube_high(blind_envs):
    env = blind_envs["lift"]
    env.reset(seed=0)
    scene = env.unwrapped.scene
    red = scene.object_pose("red_cube")[0]
    assert not env.unwrapped.is_success()
    scene.set_object_pose("red_cube", red + [0, 0, 0.09])  # bottom 9 cm up: not yet
    assert not env.unwrapped.is_success()
    scene.set_object_pose("red_cube", red + [0, 0, 0.11])
    assert env.unwrapped.is_success()


def test_stack_success_needs_red_resting_on_green(blind_envs):
    env = blind_envs["stack"]
    env.reset(seed=0)
    scene = env.unwrapped.scene
    green = scene.object_pose("green_cube")[0]
    on_top = green + [0, 0, CUBE_HALF_SIZE["green"] + CUBE_HALF_SIZE["red"]]
    scene.set_object_pose("red_cube", on_top + [0, 0, 0.03])  # hovering: no contact
    assert not env.unwrapped.is_success()
    scene.set_object_pose("red_cube", on_top + [0.05, 0, 0])  # beside the green cube's top face
    assert not settle(env)
    env.reset(seed=0)
    scene.set_object_pose("red_cube", on_top)
    assert settle(env)


def test_place_success_needs_blue_inside_the_bin(blind_envs):
    env = blind_envs["place"]
    env.reset(seed=0)
    scene = env.unwrapped.scene
    bin_pos = scene.object_pose("bin")[0]
    floor = bin_pos[2] - BIN_SIZE[2] / 2 + BIN_WALL
    scene.set_object_pose("blue_cube", bin_pos + [0, BIN_SIZE[1], 0])  # next to the bin
    assert not settle(env)
    env.reset(seed=0)
    scene.set_object_pose("blue_cube", [*bin_pos[:2], floor + CUBE_HALF_SIZE["blue"] + 0.002])
    assert settle(env)


EXPECTED_PHASES = {
    "lift": ["reach the red cube", "grasp the red cube", "lift the red cube"],
    "stack": [
        "reach the red cube",
        "grasp the red cube",
        "lift the red cube",
        "move the red cube above the green cube",
        "lower the red cube onto the green cube",
        "release the red cube",
    ],
    "place": [
        "reach the blue cube",
        "grasp the blue cube",
        "lift the blue cube",
        "move the blue cube above the bin",
        "lower the blue cube into the bin",
        "release the blue cube",
    ],
}


EXPECTED_STAGES = {"lift": ["grasped", "lifted", "success"],
                   "stack": ["grasped", "lifted", "over_target", "success"],
                   "place": ["grasped", "lifted", "over_target", "success"]}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_solves_its_task(blind_envs, task):
    env = blind_envs[task]
    expert = make_expert(task, env)
    for seed in (0, 1):
        obs, info = env.reset(seed=seed)
        assert not any(info["stages"].values())
        expert.reset()
        phases, terminated, truncated, first_reached = [], False, False, {}
        while not (terminated or truncated):
            action = expert.act(obs)
            assert action.shape == (7,) and np.abs(action).max() <= 1.0
            assert expert.execute(action) is action  # no injected mistakes by default
            if not phases or phases[-1] != expert.phase:
                phases.append(expert.phase)
            obs, reward, terminated, truncated, info = env.step(action)
            for stage, now in info["stages"].items():
                if now:
                    first_reached.setdefault(stage, env.unwrapped._elapsed_steps)
        assert terminated and info["is_success"] and reward == 1.0, f"{task} seed {seed}"
        assert phases == EXPECTED_PHASES[task]
        # The stages an evaluation reports are reached one after another, in the order listed.
        assert list(first_reached) == EXPECTED_STAGES[task] == list(info["stages"])
        steps = list(first_reached.values())
        assert steps == sorted(steps) and steps[0] < steps[-1], first_reached


def test_descent_ends_at_grasp_height_even_a_little_off_centre(blind_envs):
    """The fingers close once they are at the cube's height and within 1.5 cm of its centre
    horizontally (closing centres the cube); higher up, or farther off, the descent goes on."""
    from dataclasses import replace

    expert = make_expert("lift", blind_envs["lift"])
    descend = replace(expert.phases[1], yaw=None)  # position test only
    goal = np.array([0.0, 0.0, 0.82])

    def done(offset):
        return expert._phase_done(descend, {"eef_pos": goal + offset}, goal)

    assert done([0.01, 0.0, 0.004])       # 1 cm off centre, at height: close
    assert not done([0.0, 0.0, 0.01])     # centred but 1 cm too high
    assert not done([0.02, 0.0, 0.0])     # at height but 2 cm off


def run_with_mistake(env, expert, seed):
    """One episode through `vla collect`'s episode loop (no noise); returns (success, recorded
    actions, executed actions, the sequence of phase indices)."""
    from vla.data.collect import _Perturbation, run_episode

    recorded, executed, indices = [], [], []

    def on_frame(obs, action, phase):
        recorded.append(action)
        executed.append(expert.execute(action))  # what the loop runs next
        if not indices or indices[-1] != expert._index:
            indices.append(expert._index)

    success, _ = run_episode(env, expert, seed, _Perturbation(env.action_space, 0.0, None), on_frame)
    return success, np.array(recorded), np.array(executed), indices


def test_expert_recovers_from_a_wrong_grasp_it_executes(blind_envs):
    """mistakes=1: the expert executes a grasp 2-5 cm off while recording its own actions (open
    fingers, go to the cube); the fingers close on nothing, so it goes back to hover (phase 0),
    descends again, grasps and lifts. The same seed makes the same mistake."""
    from envs.scripted import CLOSE, OPEN

    env = blind_envs["lift"]
    expert = make_expert("lift", env, mistakes=1.0)
    success, recorded, executed, indices = run_with_mistake(env, expert, seed=1)
    assert success
    assert indices == [0, 1, 0, 1, 2, 3]  # hover, descend, (missed) hover again, descend, grasp, lift
    wrong_close = (executed[:, 6] == CLOSE) & (recorded[:, 6] == OPEN)
    assert wrong_close.sum() >= 5  # the executed fingers closed while the record says keep them open
    assert (recorded[:, 6] == CLOSE).sum() >= 10  # and the record still holds the real grasp
    _, _, again, _ = run_with_mistake(env, expert, seed=1)
    np.testing.assert_array_equal(again, executed)


def test_pick_redirects_on_what_the_fingers_hold(blind_envs):
    """The descent goes on while the fingers are open, finishes the grasp when they closed on
    the cube, and goes back to hover when they closed on nothing; the lift starts over from
    hover (3 phases back) when nothing is held."""
    expert = make_expert("lift", blind_envs["lift"])
    descend, lift = expert.phases[1], expert.phases[3]
    cube = np.array([0.1, 0.0, 0.83])
    state = {"objects": {"red_cube": {"pos": cube}}}

    def at(offset, gap):
        return {**state, "eef_pos": cube + offset, "gripper_qpos": np.array([gap / 2, -gap / 2])}

    assert descend.redirect(at([0.0, 0.0, 0.05], 0.079)) == 0     # open, on the way down
    assert descend.redirect(at([0.01, 0.0, 0.0], 0.05)) == 1      # closing around the cube
    assert descend.redirect(at([0.03, 0.02, 0.01], 0.05)) == -1   # closing 3.7 cm off: a miss
    assert lift.redirect(at([0.0, 0.0, 0.0], 0.04)) == 0          # the cube between the fingers
    assert lift.redirect(at([0.0, 0.0, 0.0], 0.002)) == -3        # fingers shut on nothing
    assert lift.redirect(at([0.0, 0.0, 0.08], 0.04)) == -3        # the cube slipped out


def test_mistake_rate_must_be_a_fraction(blind_envs):
    with pytest.raises(ValueError, match="mistakes"):
        make_expert("lift", blind_envs["lift"], mistakes=1.5)


def test_expert_refuses_another_tasks_env(blind_envs):
    with pytest.raises(ValueError, match="stack"):
        make_expert("stack", blind_envs["lift"])


def test_gymnasium_make_by_id():
    env = gym.make(gym_id("place"), cameras=(), render_mode=None)
    obs, info = env.reset(seed=0)
    assert obs[TASK] == "put the blue cube in the bin"
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    env.close()


def test_async_vector_env_steps():
    # shared_memory=True would turn the Text instruction into zeros: gymnasium cannot share strings.
    env = gym.vector.AsyncVectorEnv(
        [partial(make_env, "stack", cameras=("agentview",), image_size=32)] * 2, shared_memory=False
    )
    obs, info = env.reset(seed=[0, 1])
    obs, reward, terminated, truncated, info = env.step(np.zeros((2, 7), np.float32))
    env.close()
    assert obs[image_key("agentview")].shape == (2, 32, 32, 3)
    assert obs[OBS_STATE].shape == (2, len(STATE_NAMES))
    assert obs[TASK] == (TASKS["stack"].instruction,) * 2
    assert reward.shape == (2,) and not info["is_success"].any()
    assert info["stages"]["grasped"].shape == (2,) and not info["stages"]["over_target"].any()


def test_carry_and_place_go_back_to_the_pick_when_the_cube_is_lost(blind_envs):
    """Stack: carrying or lowering without the cube in hand goes back to the pick's first
    phase; a cube lost while lowering that lies stacked goes on to the release; after the
    release, a cube that is not stacked is picked up again."""
    expert = make_expert("stack", blind_envs["stack"])
    labels = [p.label for p in expert.phases]
    carry, lower, up = (labels.index(x) for x in ("move the red cube above the green cube",
                                                  "lower the red cube onto the green cube", "move the gripper up"))
    green = np.array([0.1, 0.0, 0.825])
    on_top = green + [0.0, 0.0, 0.045]
    fallen = green + [0.06, 0.0, -0.005]

    def state(red, eef, gap):
        return {"objects": {"red_cube": {"pos": red}, "green_cube": {"pos": green, "rot": np.eye(3)}}, "eef_pos": eef,
                "gripper_qpos": np.array([gap / 2, -gap / 2])}

    assert expert.phases[carry].redirect(state(on_top + [0, 0, 0.1], on_top + [0, 0, 0.1], 0.04)) == 0
    assert expert.phases[carry].redirect(state(fallen, on_top + [0, 0, 0.1], 0.002)) == -carry
    assert expert.phases[lower].redirect(state(on_top, on_top, 0.04)) == 0            # held, lowering
    assert expert.phases[lower].redirect(state(on_top, on_top + [0, 0, 0.05], 0.079)) == 1  # let go, stacked
    assert expert.phases[lower].redirect(state(fallen, on_top, 0.079)) == -lower     # let go, fell off
    assert expert.phases[up].redirect(state(on_top, on_top + [0, 0, 0.05], 0.079)) == 0
    assert expert.phases[up].redirect(state(fallen, on_top + [0, 0, 0.05], 0.079)) == -up


def test_expert_recovers_from_a_wrong_release_it_executes(blind_envs):
    """place_mistakes=1: the expert lets go of the red cube 3-4.5 cm beside the green cube while
    recording its own actions (fingers closed, lowering onto the green cube); the cube falls off,
    and the record shows it picked up again and stacked. The same seed makes the same mistake."""
    from envs.scripted import CLOSE, OPEN

    env = blind_envs["stack"]
    expert = make_expert("stack", env, place_mistakes=1.0)
    success, recorded, executed, indices = run_with_mistake(env, expert, seed=1)
    assert success
    lower = 5
    assert indices[:7] == [0, 1, 2, 3, 4, lower, 0]  # the wrong release sends it back to the pick
    assert indices[-3:] == [lower, 6, 7] or indices[-2:] == [lower, 6]
    wrong_open = (executed[:, 6] == OPEN) & (recorded[:, 6] == CLOSE)
    assert wrong_open.sum() >= 5  # the executed fingers opened while the record says keep holding
    _, _, again, _ = run_with_mistake(env, expert, seed=1)
    np.testing.assert_array_equal(again, executed)


def test_expert_recovers_from_a_misaligned_descent_it_executes(blind_envs):
    """align_mistakes=1: the executed descent stops 1.5-3.5 cm beside the green cube's centre,
    still holding the red cube, while the record shows the expert's own descent; from there
    the expert's sideways correction is recorded and it stacks. The gripper never opens early,
    and the same seed makes the same mistake."""
    from envs.scripted import CLOSE
    from vla.data.collect import _Perturbation, run_episode

    env = blind_envs["stack"]
    expert = make_expert("stack", env, align_mistakes=1.0)
    lower = 5
    trace = []

    def on_frame(obs, action, phase):
        objects = env.unwrapped.privileged_state()["objects"]
        offset = np.linalg.norm(objects["red_cube"]["pos"][:2] - objects["green_cube"]["pos"][:2])
        trace.append((expert._index, expert.execute(action).copy(), action.copy(), offset))

    success, _ = run_episode(env, expert, 2, _Perturbation(env.action_space, 0.0, None), on_frame)
    assert success
    mistaken = [i for i, (_, executed, recorded, _) in enumerate(trace) if not np.allclose(executed, recorded)]
    assert len(mistaken) >= 5
    assert all(trace[i][0] == lower for i in mistaken)  # only while lowering onto the green cube
    assert all(trace[i][1][6] == CLOSE and trace[i][2][6] == CLOSE for i in mistaken)
    assert 0.015 < trace[mistaken[-1]][3] < 0.035        # stalled off centre ...
    assert trace[mistaken[-1] + 5][3] < trace[mistaken[-1]][3] - 0.005  # ... and corrected from there
    executed_again = []
    expert_again = make_expert("stack", env, align_mistakes=1.0)
    run_episode(env, expert_again, 2, _Perturbation(env.action_space, 0.0, None),
                lambda obs, action, phase: executed_again.append(expert_again.execute(action).copy()))
    np.testing.assert_array_equal(np.array(executed_again), np.array([t[1] for t in trace]))


def test_one_episode_makes_each_kind_of_mistake_it_drew(blind_envs):
    """An episode that drew a wrong grasp and a wrong release executes both. Misaligned
    descents draw from their own random stream: with them on, that episode is the same, draw
    for draw (it does not also misalign), and one without a wrong release keeps its wrong
    grasp and adds the descent."""
    from envs.scripted import CLOSE, OPEN

    env = blind_envs["stack"]

    def episode(**mistakes):
        return run_with_mistake(env, make_expert("stack", env, mistakes=1.0, **mistakes), seed=1)[1:3]

    recorded, both = episode(place_mistakes=1.0)
    # a wrong grasp, then a wrong release in the same episode (the second used never to start)
    assert ((both[:, 6] == CLOSE) & (recorded[:, 6] == OPEN)).any()
    assert ((both[:, 6] == OPEN) & (recorded[:, 6] == CLOSE)).sum() >= 5
    np.testing.assert_array_equal(both, episode(place_mistakes=1.0, align_mistakes=1.0)[1])
    grasp_only, with_align = episode()[1], episode(align_mistakes=1.0)[1]
    first_difference = np.flatnonzero(np.any(grasp_only[:len(with_align)] != with_align[:len(grasp_only)], axis=1))[0]
    grasps_again = 6  # the wrong grasp (its approach, closing and rise) is over by then
    assert first_difference > np.flatnonzero(grasp_only[:, 6] == 1.0)[0] + grasps_again


def test_place_mistakes_leave_a_lift_dataset_as_it_was(blind_envs):
    """lift places nothing, so place_mistakes draws no coin: the episodes (with their wrong
    grasps) are the same as without it, draw for draw."""
    env = blind_envs["lift"]
    _, _, without, _ = run_with_mistake(env, make_expert("lift", env, mistakes=1.0), seed=3)
    _, _, with_place, _ = run_with_mistake(env, make_expert("lift", env, mistakes=1.0, place_mistakes=1.0), seed=3)
    np.testing.assert_array_equal(without, with_place)
