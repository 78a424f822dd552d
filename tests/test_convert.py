"""vla convert: robomimic / robosuite HDF5 demos from a real robosuite Lift rollout -> LeRobot.

One module-scoped rollout (2 short episodes, two 32 px cameras) is written in both layouts:
robomimic's (upright images, env_args, obs/, states, actions) and robosuite's raw
collect_human_demonstrations one (model_file, states, actions only).
"""

import json

import h5py
import huggingface_hub
import numpy as np
import pytest

from envs.mujoco_render import cpu_render_settings  # isort: skip  (before robosuite)
from vla.cli import main
from vla.data.source import open_dataset

SIZE = 32
STEPS = 6
EPISODES = 2
CAMERAS = ["agentview", "robot0_eye_in_hand"]


def run_cli(capsys, *args):
    code = main(["convert", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def env_kwargs() -> dict:
    """robosuite.make kwargs as robomimic's env_args stores them."""
    from robosuite.controllers import load_composite_controller_config

    return {"robots": ["Panda"], "controller_configs": load_composite_controller_config(robot="Panda"),
            "has_renderer": False, "has_offscreen_renderer": True, "ignore_done": True, "use_object_obs": True,
            "use_camera_obs": True, "camera_depths": False, "camera_names": CAMERAS, "camera_heights": SIZE,
            "camera_widths": SIZE, "reward_shaping": False, "control_freq": 20}


@pytest.fixture(scope="module")
def rollout():
    """Episodes of random OSC_POSE actions in robosuite's Lift: per episode the scene XML, the
    flattened states, the actions and robomimic-style observations (images flipped upright)."""
    import robosuite

    env = robosuite.make("Lift", **env_kwargs())
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(EPISODES):
        env.reset()
        # The scene as recorded; get_xml after cpu_render_settings would bake the settings in.
        episode = {"model_file": env.sim.model.get_xml(), "states": [], "actions": [], "obs": []}
        cpu_render_settings(env.sim)  # as vla's robosuite envs and the converter's replay render
        obs = env._get_observations(force_update=True)
        for _ in range(STEPS):
            action = np.r_[rng.uniform(-0.5, 0.5, 6), rng.choice([-1.0, 1.0])]
            episode["states"].append(env.sim.get_state().flatten())
            episode["actions"].append(action)
            episode["obs"].append(robomimic_obs(obs))
            env.step(action)
            # robosuite observes before the last physics substep's integration; robomimic's stored
            # observations come from replaying each state (set state, forward), as here.
            env.sim.forward()
            obs = env._get_observations(force_update=True)
        episode["obs"] = {k: np.stack([o[k] for o in episode["obs"]]) for k in episode["obs"][0]}
        episodes.append(episode)
    env.close()
    return episodes


def robomimic_obs(obs: dict) -> dict:
    """What robomimic's EnvRobosuite.get_observation stores: images with their rows reversed
    (robosuite renders OpenGL-style, bottom row first), ``object``, the robot0_* keys."""
    out = {k: v[::-1].copy() for k, v in obs.items() if k.endswith("_image")}
    out["object"] = np.asarray(obs["object-state"])
    out.update({k: np.asarray(v) for k, v in obs.items()
                if k.startswith("robot0_") and k not in out and not k.endswith("proprio-state")})
    return out


def write_robomimic(path, episodes, *, obs_keys=None, ep_meta=None, nan_at=None):
    import robosuite

    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_version": robosuite.__version__, "type": 1,
                                             "env_kwargs": env_kwargs()})
        for i, ep in enumerate(episodes):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["model_file"] = ep["model_file"]
            demo.attrs["num_samples"] = STEPS
            if ep_meta is not None:
                demo.attrs["ep_meta"] = json.dumps(ep_meta)
            actions = np.array(ep["actions"])
            if nan_at is not None and i == nan_at[0]:
                actions[nan_at[1], 2] = np.nan
            demo.create_dataset("actions", data=actions)
            demo.create_dataset("states", data=np.array(ep["states"]))
            demo.create_dataset("rewards", data=np.zeros(STEPS))
            demo.create_dataset("dones", data=np.eye(STEPS)[-1])
            for key, value in ep["obs"].items():
                if obs_keys is None or key in obs_keys:
                    demo.create_dataset(f"obs/{key}", data=value)
        data.attrs["total"] = STEPS * len(episodes)
        f.create_dataset("mask/train", data=np.array([f"demo_{i}" for i in range(len(episodes))], dtype="S"))
    return path


def write_robosuite(path, episodes):
    """collect_human_demonstrations.py's layout: no observations at all."""
    import robosuite

    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env"] = "Lift"
        data.attrs["repository_version"] = robosuite.__version__
        data.attrs["env_info"] = json.dumps({"env_name": "Lift", "robots": ["Panda"], "controller_configs":
                                             env_kwargs()["controller_configs"]})
        for i, ep in enumerate(episodes):
            demo = data.create_group(f"demo_{i + 1}")
            demo.attrs["model_file"] = ep["model_file"]
            demo.create_dataset("states", data=np.array(ep["states"]))
            demo.create_dataset("actions", data=np.array(ep["actions"]))
    return path


def expected_state(obs: dict) -> np.ndarray:
    """eef_pos | rot6d of robot0_eef_quat | gripper_qpos, as envs.robosuite_tasks.env observes it."""
    from scipy.spatial.transform import Rotation

    rotations = Rotation.from_quat(obs["robot0_eef_quat"]).as_matrix()  # scipy's order is (x, y, z, w) too
    rot = np.concatenate([rotations[:, :, 0], rotations[:, :, 1]], axis=1)
    return np.concatenate([obs["robot0_eef_pos"], rot, obs["robot0_gripper_qpos"]], axis=1).astype(np.float32)


def decoded_images(ds, key: str) -> np.ndarray:
    """(N, H, W, 3) uint8 frames of camera ``key``, decoded from the dataset's video."""
    return np.stack([(ds[i][key].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for i in range(len(ds))])


def test_round_trip_robomimic_images(rollout, tmp_path, capsys):
    src = write_robomimic(tmp_path / "image.hdf5", rollout)
    root = tmp_path / "lift_rm"
    code, out, err = run_cli(capsys, f"convert.input={src}", f"dataset.root={root}", "dataset.repo_id=local/lift_rm",
                             f"convert.image_size={SIZE}", "convert.filter_key=train")
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith(f"converted {EPISODES} episodes ({EPISODES * STEPS} frames)")
    ds = open_dataset(root)
    assert ds.meta.total_episodes == EPISODES and len(ds) == EPISODES * STEPS and ds.fps == 20
    assert ds.meta.robot_type == "panda"
    assert sorted(k for k in ds.meta.features if k.startswith("observation.images.")) == \
        ["observation.images.agentview", "observation.images.wrist"]
    lengths = [ds.meta.episodes[i]["length"] for i in range(EPISODES)]
    assert lengths == [STEPS] * EPISODES
    table = ds.hf_dataset.with_format("numpy")
    actions, states = np.stack(table["action"]), np.stack(table["observation.state"])
    env_states = np.stack(table["observation.environment_state"])
    want_actions = np.concatenate([np.array(ep["actions"], np.float32) for ep in rollout])
    assert np.array_equal(actions, want_actions)
    want_states = np.concatenate([expected_state(ep["obs"]) for ep in rollout])
    assert states.shape == (EPISODES * STEPS, 11) and np.array_equal(states, want_states)
    assert np.array_equal(env_states, np.concatenate([ep["obs"]["object"] for ep in rollout]).astype(np.float32))
    assert ds[0]["task"] == "lift the red cube"
    for vla_name, rs_name in [("agentview", "agentview"), ("wrist", "robot0_eye_in_hand")]:
        got = decoded_images(ds, f"observation.images.{vla_name}").astype(float)
        want = np.concatenate([ep["obs"][f"{rs_name}_image"] for ep in rollout]).astype(float)
        assert np.abs(got - want).mean() < 4, f"{vla_name}: decoded frames differ from the file's"
        # orientation: upright frames match far better than upside-down ones
        assert np.abs(got - want).mean() < np.abs(got - want[:, ::-1]).mean() / 2
    provenance = json.loads((root / "meta/vla_convert.json").read_text())["conversions"][0]
    assert provenance["episodes"] == {"0": "demo_0", "1": "demo_1"} and provenance["images"] == "from the file"
    assert not list(tmp_path.glob(".lift_rm.*")), "the staging directory is gone"

    # Appending the same file again (same features) doubles the dataset, all-or-nothing.
    code, out, err = run_cli(capsys, f"convert.input={src}", f"dataset.root={root}", f"convert.image_size={SIZE}")
    assert code == 0, err
    assert open_dataset(root).meta.total_episodes == 2 * EPISODES
    # ... but a conversion with other features is refused and leaves it as it was.
    code, _, err = run_cli(capsys, f"convert.input={src}", f"dataset.root={root}", "convert.image_size=24")
    assert code == 2 and "observation.images" in err and str(root) in err and len(err.strip().splitlines()) == 1
    assert open_dataset(root).meta.total_episodes == 2 * EPISODES
    assert not list(tmp_path.glob(".lift_rm.*"))


def test_rerender_from_states_matches_the_rollout(rollout, tmp_path, capsys):
    src = write_robosuite(tmp_path / "demo.hdf5", rollout)
    root = tmp_path / "lift_rs"
    code, out, err = run_cli(capsys, f"convert.input={src}", f"dataset.root={root}", f"convert.image_size={SIZE}")
    assert code == 0, err
    assert "re-rendered" in out
    ds = open_dataset(root)
    assert ds.meta.total_episodes == EPISODES and len(ds) == EPISODES * STEPS
    table = ds.hf_dataset.with_format("numpy")
    want = np.concatenate([expected_state(ep["obs"]) for ep in rollout])
    assert np.abs(np.stack(table["observation.state"]) - want).max() < 1e-6
    assert np.array_equal(np.stack(table["action"]),
                          np.concatenate([np.array(ep["actions"], np.float32) for ep in rollout]))
    for vla_name, rs_name in [("agentview", "agentview"), ("wrist", "robot0_eye_in_hand")]:
        got = decoded_images(ds, f"observation.images.{vla_name}").astype(float)
        want = np.concatenate([ep["obs"][f"{rs_name}_image"] for ep in rollout]).astype(float)
        assert np.abs(got - want).mean() < 4, f"{vla_name}: re-rendered frames differ from the rollout's"


def test_ep_meta_language_wins_in_a_low_dim_file(rollout, tmp_path, capsys):
    keys = {"robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"}  # robomimic's low_dim.hdf5
    src = write_robomimic(tmp_path / "low_dim.hdf5", rollout[:1], obs_keys=keys,
                          ep_meta={"lang": "pick up the cube", "layout_id": 3})
    root = tmp_path / "lang"
    code, _, err = run_cli(capsys, f"convert.input={src}", f"dataset.root={root}", "convert.cameras=[]",
                           "convert.instruction=ignored when ep_meta has lang")
    assert code == 0, err
    ds = open_dataset(root)
    assert ds[0]["task"] == "pick up the cube"
    assert not any(k.startswith("observation.images.") for k in ds.meta.features)
    states = np.stack(ds.hf_dataset.with_format("numpy")["observation.state"])
    assert np.array_equal(states, expected_state(rollout[0]["obs"]))


def test_instruction_override_and_missing_instruction(rollout, tmp_path, capsys):
    import robosuite

    src = write_robomimic(tmp_path / "x.hdf5", rollout[:1], obs_keys={"robot0_eef_pos", "robot0_eef_quat"})
    with h5py.File(src, "a") as f:
        args = json.loads(f["data"].attrs["env_args"])
        f["data"].attrs["env_args"] = json.dumps({**args, "env_name": "MyLift", "env_version": robosuite.__version__})
    code, _, err = run_cli(capsys, f"convert.input={src}", f"dataset.root={tmp_path / 'a'}", "convert.cameras=[]")
    assert code == 2 and "convert.instruction" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
    code, _, err = run_cli(capsys, f"convert.input={src}", f"dataset.root={tmp_path / 'b'}", "convert.cameras=[]",
                           "convert.instruction='lift it'")
    assert code == 0, err
    ds = open_dataset(tmp_path / "b")
    assert ds[0]["task"] == "lift it"
    assert tuple(ds.meta.features["observation.state"]["shape"]) == (9,), "no gripper_qpos in the file: eef pose only"


def _bad_inputs(tmp_path, rollout):
    missing_key = write_robomimic(tmp_path / "missing.hdf5", rollout, obs_keys={"robot0_eef_pos", "object"})
    nan = write_robomimic(tmp_path / "nan.hdf5", rollout, obs_keys=set(), nan_at=(1, 3))
    nan_obs = write_robomimic(tmp_path / "nan_obs.hdf5", rollout)
    with h5py.File(nan_obs, "a") as f:  # found while recording, after demo_0 was saved
        f["data/demo_1/obs/robot0_eef_pos"][2, 0] = np.inf
    not_hdf5 = tmp_path / "notes.hdf5"
    not_hdf5.write_text("not an hdf5 file")
    no_data = tmp_path / "empty.hdf5"
    h5py.File(no_data, "w").close()
    return {
        "missing file": ([f"convert.input={tmp_path / 'nope.hdf5'}"], "no such file"),
        "not hdf5": ([f"convert.input={not_hdf5}"], "not a readable HDF5 file"),
        "no data group": ([f"convert.input={no_data}"], "no 'data' group"),
        "missing key": ([f"convert.input={missing_key}", "convert.cameras=[]"],
                        "data/demo_0 has no 'obs/robot0_eef_quat'"),
        "nan action": ([f"convert.input={nan}"], "data/demo_1/actions has a non-finite value at step 3"),
        "nan observation": ([f"convert.input={nan_obs}"],
                            "data/demo_1 step 2: non-finite value in 'observation.state'"),
        "unknown camera": ([f"convert.input={missing_key}", "convert.cameras=[wrist,ceiling]"],
                           "unknown camera(s) ['ceiling']"),
        "unknown filter key": ([f"convert.input={missing_key}", "convert.filter_key=valid"],
                               "no filter key 'valid' (mask/ has ['train'])"),
    }


def test_bad_inputs_are_one_line_and_leave_nothing(rollout, tmp_path, capsys):
    for case, (args, message) in _bad_inputs(tmp_path, rollout).items():
        root = tmp_path / "out"
        code, _, err = run_cli(capsys, *args, f"dataset.root={root}", f"convert.image_size={SIZE}")
        assert code == 2, case
        last = err.rstrip("\n").split("\n")[-1]  # after the progress bar, when one was drawn
        assert last.startswith("vla convert: error: ") and message in last, (case, err)
        assert not root.exists() and not list(tmp_path.glob(".out.*")), f"{case}: a dataset was left behind"
