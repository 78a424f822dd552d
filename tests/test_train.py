"""The shared training loop: checkpoints, resume (also after kill -9), DDP with gloo."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY
from vla.cli import main


def weights(run_dir, step="last"):
    return load_file(run_dir / "checkpoints" / step / "pretrained_model" / "model.safetensors")


def test_checkpoints_are_complete_and_last_points_at_the_newest(trained_run):
    ckpts = trained_run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["000002", "000004", "last"]
    assert (ckpts / "last").resolve().name == "000004"
    model_dir = ckpts / "last" / "pretrained_model"
    assert {p.name for p in model_dir.iterdir()} == {"config.json", "model.safetensors", "normalization.json"}
    assert (ckpts / "last" / "training_state" / "state.pt").exists()
    assert (trained_run / "loss.png").stat().st_size > 0
    assert (trained_run / "metrics.csv").read_text().count("\n") == 5  # header + 4 steps
    assert any((trained_run / "tensorboard").iterdir())
    w2, w4 = weights(trained_run, "000002"), weights(trained_run, "000004")
    assert any(not torch.equal(w2[k], w4[k]) for k in w2), "training must change the weights"
    raw = torch.load(ckpts / "last" / "training_state" / "state.pt", weights_only=False)["model"]
    assert any(not torch.equal(raw[k], w4[k]) for k in w4), "with train.ema_decay the checkpoint holds EMA weights"


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(lift_dataset, tmp_path, capsys, monkeypatch):
    from vla.errors import TrainingError
    from vla.train import Trainer

    def diverge(self, batch):
        if self.step == 2:
            raise TrainingError(f"loss became nan at step {self.step}; lower train.lr or check the data")
        return real_step(self, batch)

    real_step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", diverge)
    out = tmp_path / "run"
    code = main(["train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=10", *TINY])
    assert code == 2 and "loss became nan at step 2" in capsys.readouterr().err
    assert not out.exists(), "no tensorboard/ or metrics.csv left behind"
    kept = tmp_path / "kept"  # one checkpoint written first: the run is kept for --resume
    code = main(["train", f"dataset.root={lift_dataset}", f"output_dir={kept}", "train.steps=10",
                 "train.save_every=1", *TINY])
    assert code == 2 and (kept / "checkpoints" / "last").exists()


def test_resume_continues_exactly(trained_run, lift_dataset, tmp_path):
    """Resuming from the step-2 checkpoint reproduces the uninterrupted run's step-4 weights
    (same RNG, data order, optimizer and schedule state)."""
    out = tmp_path / "resumed"
    shutil.copytree(trained_run, out, symlinks=True)
    ckpts = out / "checkpoints"
    shutil.rmtree(ckpts / "000004")
    (ckpts / "last").unlink()
    (ckpts / "last").symlink_to("000002")
    args = ["train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=4", "train.save_every=2", *TINY]
    assert main([*args, "--resume"]) == 0
    straight, resumed = weights(trained_run), weights(out)
    assert (ckpts / "last").resolve().name == "000004"
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(straight[k], resumed[k], rtol=1e-5, atol=1e-6)


def _vla(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "vla.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_kill9_then_resume(lift_dataset, tmp_path):
    out = tmp_path / "killed"
    args = ["train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.save_every=2", *TINY]
    proc = _vla(*args, "train.steps=100000")
    last = out / "checkpoints" / "last"
    deadline = time.time() + 240
    while time.time() < deadline and not (last.exists() and int(last.resolve().name) >= 4):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(last.resolve().name)
    assert (last / "pretrained_model" / "model.safetensors").exists()
    resumed = _vla(*args, f"train.steps={killed_at + 2}", "--resume")
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert last.resolve().name == f"{killed_at + 2:06d}"
    assert not list((out / "checkpoints").glob(".tmp-*")), "stale temporary checkpoints are cleaned up"


@pytest.mark.timeout(400)
def test_ddp_two_processes_gloo(lift_dataset, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "vla.cli", "train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=2",
           "train.save_every=2", "device=cpu", *TINY]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=380, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").exists()


def test_periodic_evaluation_writes_reports(lift_dataset, tmp_path):
    out = tmp_path / "with_eval"
    args = ["train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=2", "train.save_every=2",
            "train.eval_every=2", "train.eval_episodes=1", "env.max_episode_steps=3", *TINY]
    assert main(args) == 0
    report = out / "eval" / "step_000002" / "report.json"
    assert report.exists() and '"episodes": 1' in report.read_text()
    events = b"".join(p.read_bytes() for p in (out / "tensorboard").iterdir())
    assert b"eval/success_rate" in events


def test_environment_state_auxiliary_target_trains_and_is_not_needed_to_act(lift_dataset, tmp_path):
    """With policy.env_state_weight the loss includes the object-pose readout, and the trained
    policy acts from cameras, state and instruction alone (what a real robot provides)."""
    import csv

    import numpy as np

    from envs.tabletop import make_env
    from vla.checkpoint import load_policy
    from vla.features import OBS_ENV_STATE
    from vla.runtime import RuntimePolicy

    out = tmp_path / "aux"
    assert main(["train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=3",
                 "policy.env_state_weight=1.0", *TINY]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert all(0 < float(r["env_state_mse"]) < 10 for r in rows)  # a normalized target, not raw metres
    assert all(float(r["loss"]) > float(r["action_loss"]) for r in rows)
    policy, normalizer = load_policy(out)
    assert policy.config.env_state_dim == 20
    env = make_env("lift", image_size=96)
    obs, _ = env.reset(seed=0)
    obs.pop(OBS_ENV_STATE)
    batch = {k: [v] if isinstance(v, str) else np.asarray(v)[None] for k, v in obs.items()}
    action = RuntimePolicy(policy, normalizer).act(batch)
    env.close()
    assert action.shape == (1, 7) and np.isfinite(action).all()


def test_environment_state_target_that_does_not_match_names_the_key(lift_dataset, tmp_path, capsys):
    """A dataset whose observation.environment_state does not match the policy's cannot
    supply the auxiliary target: a one-line error names the feature, nothing is written."""
    code = main(["train", f"dataset.root={lift_dataset}", f"output_dir={tmp_path / 'x'}", "train.steps=1",
                 "policy.env_state_weight=1.0", "policy.env_state_dim=5", *TINY])
    assert code != 0
    err = capsys.readouterr().err
    assert "observation.environment_state" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_a_time_budget_ends_the_run_with_a_checkpoint_and_a_summary(lift_dataset, tmp_path):
    import json

    out = tmp_path / "timed"
    args = ["train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=1000000",
            "train.max_seconds=3", "train.save_every=1000000", *TINY]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["stopped_by"] == "time" and 1 <= s["steps"] < 1000000
    assert s["samples_seen"] == s["steps"] * 4 and s["train_seconds"] >= 3
    assert s["final_loss"] is not None and s["final_loss"] > 0
    assert (out / "checkpoints" / "last").resolve().name == f"{s['steps']:06d}"  # saved where it stopped
    assert main(["train", "--resume", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=1000000",
                 "train.max_seconds=3", *TINY]) == 0  # the budget is spent: nothing more to do
    assert json.loads((out / "summary.json").read_text())["steps"] == s["steps"]
