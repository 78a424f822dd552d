"""Every bad input a user can type, answered the same way: one line on stderr that names the
culprit, exit status 2, and nothing written (no run, dataset, report or deploy folder; the inputs
untouched). One table; each row is a command line as a user types it.

Placeholders: {data} a recorded lift dataset, {run} a trained run, {tmp} an empty folder of the
case's own. A row's `setup` prepares damaged inputs inside {tmp} before the snapshot is taken.
"""

import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.conftest import TINY
from vla.cli import main


@dataclass
class Case:
    id: str
    command: str                       # what follows `vla`, with placeholders
    says: str                          # a piece of the one-line message
    setup: Callable | None = None      # setup(tmp, data, run) -> an object to close afterwards, or None


# ------------------------------------------------------------------ inputs damaged on purpose

def checkpoint_copy(tmp: Path, run: Path) -> Path:
    ckpt = tmp / "ckpt"
    shutil.copytree(run / "checkpoints" / "last", ckpt)
    return ckpt / "pretrained_model"


def truncate_weights(tmp, data, run):
    model = checkpoint_copy(tmp, run)
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[: len(weights) // 2])


def garble_config(tmp, data, run):
    (checkpoint_copy(tmp, run) / "config.json").write_text("{not json")


def drop_statistics(tmp, data, run):
    (checkpoint_copy(tmp, run) / "normalization.json").unlink()


def edit_config(**changes):
    """A config.json edited by hand so that it no longer describes the weights beside it."""
    def setup(tmp, data, run):
        path = checkpoint_copy(tmp, run) / "config.json"
        meta = json.loads(path.read_text())
        meta["config"].update(changes)
        path.write_text(json.dumps(meta))
    return setup


def nan_in_actions(tmp, data, run):
    """A copy of the dataset with one NaN in one action of its last parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(data, tmp / "nan")
    path = sorted((tmp / "nan" / "data").rglob("*.parquet"))[-1]
    table = pq.read_table(path)
    actions = np.stack(table.column("action").to_numpy(zero_copy_only=False)).astype(np.float32)
    actions[5, 3] = np.nan
    column = pa.FixedSizeListArray.from_arrays(pa.array(actions.reshape(-1)), actions.shape[1])
    pq.write_table(table.set_column(table.column_names.index("action"), "action", column), path)


def not_a_dataset(tmp, data, run):
    (tmp / "empty").mkdir()


def half_written_dataset(tmp, data, run):
    shutil.copytree(data, tmp / "half")
    (tmp / "half" / "meta" / "info.json").write_text("{not json")


def locked_by_another_recorder(tmp, data, run):
    """Another recorder is writing {tmp}/ds: hold its lock for the duration of the case."""
    from vla.data.recorder import acquire_lock

    fd = acquire_lock(tmp / "ds")
    return type("Lock", (), {"close": lambda self: __import__("os").close(fd)})()


def a_file(tmp, data, run):
    (tmp / "file.txt").write_text("not a dataset\n")


# ------------------------------------------------------------------ the table

TRAIN = "train dataset.root={data} output_dir={tmp}/run " + " ".join(TINY)
EVAL = "eval eval.checkpoint={run} eval.episodes=1 eval.output_dir={tmp}/eval"
DEPLOY = "deploy deploy.checkpoint={run} deploy.output_dir={tmp}/deploy deploy.max_steps=2"
COLLECT = "collect collect.episodes=1 dataset.root={tmp}/ds"

# a two-entry mixture of the recorded dataset with itself; {second} is the second entry
MIX = ("train output_dir={{tmp}}/run \"dataset.mixture=[{{{{name: a, root: '{{data}}'}}}}, {second}]\" "
       + " ".join(TINY))

CASES = [
    # config: keys, types, ranges, combinations
    Case("unknown-key", TRAIN + " train.stepz=5", "unknown config key 'train.stepz'"),
    Case("unknown-policy", TRAIN + " policy=nope", "policy/nope"),
    Case("unknown-env", TRAIN + " env=nope", "env/nope"),
    Case("int-expected", TRAIN + " train.steps=abc", "train.steps=abc: Value 'abc' of type 'str' could not be "
                                                     "converted to Integer"),
    Case("bool-expected", TRAIN + " train.amp=maybe", "not a valid bool"),
    Case("list-expected", TRAIN + " env.cameras=wrist", "env.cameras=wrist"),
    Case("negative-lr", TRAIN + " train.lr=-1", "train.lr must be > 0, got -1.0"),
    Case("zero-batch", TRAIN + " train.batch_size=0", "train.batch_size must be >= 1"),
    Case("ema-decay-1", TRAIN + " train.ema_decay=1.0", "train.ema_decay must be in (0, 1)"),
    Case("negative-time-budget", TRAIN + " train.max_seconds=-1", "train.max_seconds must be > 0"),
    Case("horizon-below-actions", TRAIN + " policy.horizon=2", "policy (dita): n_action_steps=4 must be in "
                                                               "[1, horizon=2]"),
    Case("unknown-device", TRAIN + " device=tpu", "device='tpu' is not a torch device"),
    Case("resume-nothing", TRAIN + " --resume", "--resume: no checkpoint in"),
    Case("second-run-same-dir", "train dataset.root={data} output_dir={run} " + " ".join(TINY), "--resume"),
    Case("init-from-nowhere", TRAIN + " train.init_from={tmp}/nowhere", "no such checkpoint directory"),
    # collect
    Case("collect-zero-episodes", COLLECT + " collect.episodes=0", "collect.episodes must be >= 1"),
    Case("collect-negative-noise", COLLECT + " collect.action_noise=-1", "collect.action_noise"),
    Case("collect-noise-dims", COLLECT + " collect.action_noise=0.1 collect.noise_dims=[0,9]", "collect.noise_dims"),
    Case("collect-zero-workers", COLLECT + " collect.n_envs=0", "collect.n_envs"),
    Case("collect-grasp-fraction", COLLECT + " collect.grasp_mistakes=1.5", "collect.grasp_mistakes"),
    Case("collect-grasp-needs-expert", COLLECT + " collect.agent=random collect.grasp_mistakes=0.5",
         "collect.agent=expert"),
    Case("collect-place-fraction", COLLECT + " collect.place_mistakes=-0.1", "collect.place_mistakes"),
    Case("collect-place-needs-expert", COLLECT + " collect.agent=random collect.place_mistakes=0.5",
         "collect.agent=expert"),
    Case("collect-align-fraction", COLLECT + " collect.align_mistakes=2", "collect.align_mistakes"),
    Case("collect-locked-dataset", COLLECT, "being written by another recorder", locked_by_another_recorder),
    Case("collect-agent-nowhere", COLLECT + " collect.agent={tmp}/nowhere", "no such checkpoint directory"),
    # dataset
    Case("dataset-missing", "train dataset.root={tmp}/nowhere output_dir={tmp}/run", "nowhere"),
    Case("dataset-is-a-file", "train dataset.root={tmp}/file.txt output_dir={tmp}/run",
         "is a file, not a LeRobot dataset directory", a_file),
    Case("dataset-not-lerobot", "train dataset.root={tmp}/empty output_dir={tmp}/run", "not a LeRobot dataset",
         not_a_dataset),
    Case("dataset-half-written", "train dataset.root={tmp}/half output_dir={tmp}/run", "half-written",
         half_written_dataset),
    Case("dataset-nan", "train dataset.root={tmp}/nan output_dir={tmp}/run " + " ".join(TINY),
         "non-finite values (NaN or inf) in 'action'", nan_in_actions),
    Case("dataset-episode-out-of-range", TRAIN + " dataset.episodes=[0,99]", "no episode [99]"),
    Case("dataset-no-episodes", TRAIN + " dataset.episodes=[]", "dataset.episodes=[]"),
    Case("dataset-lacks-camera", TRAIN + " policy.backbone.cameras=[agentview,front]", "observation.images.front"),
    Case("dataset-state-shape", TRAIN + " policy.state_dim=5", "observation.state"),
    Case("mapping-missing-key", TRAIN + " dataset.features.cameras.agentview=observation.image",
         "dataset.features.cameras.agentview: the dataset has no key 'observation.image'"),
    Case("mapping-slice-out-of-range", TRAIN + " dataset.features.action=action[0:9]",
         "dataset.features.action: action[0:9] is out of range for 'action', which has 7 values"),
    Case("mapping-bad-source", TRAIN + " dataset.features.state=observation.state[1]",
         "dataset.features.state: 'observation.state[1]' is not a dataset key or a slice of one"),
    Case("mixture-duplicate-name", MIX.format(second="{{name: a, root: '{data}'}}"),
         "dataset.mixture[1]: two entries are named 'a'"),
    Case("mixture-weight-zero", MIX.format(second="{{name: b, root: '{data}', weight: 0}}"),
         "dataset.mixture[1] (b): weight must be > 0, got 0"),
    Case("mixture-missing-key", MIX.format(second="{{name: b, root: '{data}', features: {{action: nope}}}}"),
         "dataset.mixture[1] (b): dataset.features.action: the dataset has no key 'nope'"),
    Case("mixture-slice-out-of-range",
         MIX.format(second="{{name: b, root: '{data}', features: {{state: 'observation.state[0:20]'}}}}"),
         "dataset.mixture[1] (b): dataset.features.state: observation.state[0:20] is out of range"),
    Case("mixture-temperature", TRAIN + " dataset.temperature=0", "dataset.temperature must be > 0"),
    Case("mixture-narrower-policy", MIX.format(second="{{name: b, root: '{data}'}}") + " policy.action_dim=3",
         "dataset.mixture[0] (a): 'action' has 7 values, more than policy.action_dim=3"),
    Case("mapping-camera-from-a-vector", TRAIN + " dataset.features.cameras.agentview=observation.state",
         "dataset.features.cameras.agentview: 'observation.state' is a float32 vector, not a camera"),
    # checkpoint
    Case("checkpoint-nowhere", "eval eval.checkpoint={tmp}/nowhere eval.episodes=1", "no such checkpoint directory"),
    Case("checkpoint-is-a-dataset", "eval eval.checkpoint={data} eval.episodes=1 eval.output_dir={tmp}/eval",
         "not a checkpoint"),
    Case("checkpoint-truncated", "eval eval.checkpoint={tmp}/ckpt eval.episodes=1 eval.output_dir={tmp}/eval",
         "corrupt or truncated", truncate_weights),
    Case("checkpoint-garbled-config", "eval eval.checkpoint={tmp}/ckpt eval.episodes=1 eval.output_dir={tmp}/eval",
         "corrupt or truncated", garble_config),
    Case("checkpoint-no-statistics", "eval eval.checkpoint={tmp}/ckpt eval.episodes=1 eval.output_dir={tmp}/eval",
         "corrupt or truncated", drop_statistics),
    Case("checkpoint-width-edited", "eval eval.checkpoint={tmp}/ckpt eval.episodes=1 eval.output_dir={tmp}/eval",
         "config.json and model.safetensors disagree", edit_config(width=128)),
    Case("checkpoint-action-dim-edited",
         "eval eval.checkpoint={tmp}/ckpt eval.episodes=1 eval.output_dir={tmp}/eval",
         "config.json and model.safetensors disagree", edit_config(action_dim=14)),
    Case("checkpoint-heads-edited", "eval eval.checkpoint={tmp}/ckpt eval.episodes=1 eval.output_dir={tmp}/eval",
         "does not build a dita policy (width 64 is not divisible by heads 3)", edit_config(heads=3)),
    # evaluation settings
    Case("eval-zero-episodes", EVAL + " eval.episodes=0", "eval.episodes must be >= 1"),
    Case("eval-zero-envs", EVAL + " eval.n_envs=0", "eval.n_envs must be >= 1"),
    Case("eval-zero-inference-steps", EVAL + " eval.inference_steps=0", "eval.inference_steps must be >= 1"),
    Case("eval-too-many-inference-steps", EVAL + " eval.inference_steps=101", "exceeds num_train_timesteps=100"),
    Case("eval-tts-for-dita", EVAL + " eval.test_time_scaling=4", "no test-time scaling"),
    Case("eval-replan-beyond-horizon", EVAL + " eval.n_action_steps=99", "n_action_steps=99"),
    # env settings and gymnasium observation mappings
    Case("env-unknown-camera", COLLECT + " env=lift env.cameras=[front]", "unknown cameras ['front']"),
    Case("env-gym-needs-instruction", COLLECT + " env.family=gym env.id=NoSuch-v0 collect.agent=random",
         "env.instruction is required"),
    Case("env-gym-bad-mapping", COLLECT + " env=pusht collect.agent=random env.gym.state=[agent_poz]", "agent_poz"),
    Case("env-robosuite-robot", COLLECT + " env=robosuite-lift env.robot=R2D2", "R2D2"),
    # deploy
    Case("deploy-camera-missing", DEPLOY + " robot.cameras=[agentview]", "observation.images.wrist"),
    Case("deploy-unknown-backend", DEPLOY + " robot.backend=ros3", "robot.backend"),
    Case("deploy-zero-steps", DEPLOY + " deploy.max_steps=0", "deploy.max_steps"),
    Case("deploy-action-space", DEPLOY + " robot.action_space=joint_position", "action"),
    Case("deploy-negative-speed-limit", DEPLOY + " robot.safety.max_eef_speed=-1", "robot.safety.max_eef_speed"),
    Case("deploy-tts-for-dita", DEPLOY + " deploy.test_time_scaling=4", "deploy.test_time_scaling"),
    Case("deploy-no-checkpoint", "deploy deploy.checkpoint={tmp}/nowhere deploy.output_dir={tmp}/deploy",
         "no such checkpoint directory"),
    # convert
    Case("convert-no-input", "convert dataset.root={tmp}/ds", "convert.input is required"),
    Case("convert-input-missing", "convert convert.input={tmp}/nowhere.hdf5 dataset.root={tmp}/ds", "no such file"),
    Case("convert-input-not-hdf5", "convert convert.input={tmp}/file.txt dataset.root={tmp}/ds",
         "not a readable HDF5 file", a_file),
]


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots`` with its size and modification time."""
    return {str(p): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for root in roots if root.exists() for p in [root, *root.rglob("*")]}


def test_the_table_is_big_and_every_case_is_distinct():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES) and len({(c.command, c.setup) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, lift_dataset, trained_run, tmp_path, capsys):
    held = case.setup(tmp_path, lift_dataset, trained_run) if case.setup else None
    before = snapshot(tmp_path, lift_dataset, trained_run)
    capsys.readouterr()
    try:
        args = [a.format(data=lift_dataset, run=trained_run, tmp=tmp_path) for a in shlex.split(case.command)]
        code = main(args)
    finally:
        if held is not None:
            held.close()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith(f"vla {args[0]}: error: ") and case.says in lines[0], lines[0]
    assert snapshot(tmp_path, lift_dataset, trained_run) == before, "a bad input left files behind"
