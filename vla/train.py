"""The one training loop, shared by every policy (DDP-aware through torchrun).

    dataset -> batches (cached backbone features, or raw frames) -> normalize ->
    policy.compute_loss -> AdamW + warmup/cosine + clipping (+ EMA) -> atomic checkpoints

Everything policy-specific lives in ``compute_loss``; this file never names a policy.
"""

from __future__ import annotations

import csv
import random
import shutil
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vla.checkpoint import (
    STATE_DIR, CheckpointError, clean_stale_tmp, load_policy, load_trainable_weights, save_checkpoint
)
from vla.config import RunConfig
from vla.contract import check_batch
from vla.data.normalize import normalize_batch
from vla.distributed import Distributed
from vla.errors import ConfigError, TrainingError
from vla.policy import Policy, PolicyConfig, make_policy


def to_device(batch, device):
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True) if torch.is_tensor(batch) else batch


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norm scales and embedding tables (1-D or *_embed params)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class Trainer:
    """Builds everything from the configs, then :meth:`run` trains to ``train.steps``."""

    def __init__(self, run: RunConfig, policy_cfg: PolicyConfig | None, *, resume: bool = False, progress: bool = True):
        self.run_cfg, self.progress = run, progress
        self.out = Path(run.output_dir)
        self.dist = Distributed.setup(run.device)
        self.device = self.dist.device
        if resume:
            policy_cfg = self._resume_config()
        elif (self.out / "checkpoints" / "last").exists():
            raise TrainingError(f"{self.out} already holds a run; "
                                "pass --resume to continue it or pick another output_dir")
        if policy_cfg is None:
            raise TrainingError("no policy configured (e.g. policy=dita-small)")
        seed_everything(run.seed + self.dist.rank)
        from vla.data.mixture import MixtureData
        from vla.data.pipeline import TrainingData

        source = MixtureData if run.dataset.mixture else TrainingData  # several datasets, or one
        self.data = source(run.dataset, policy_cfg, seed=run.seed + self.dist.rank, device=self.device,
                           num_workers=run.train.num_workers, batch_size=run.train.batch_size,
                           is_main=self.dist.is_main, barrier=self.dist.barrier, progress=progress)
        self.policy_cfg = self.data.policy_cfg
        self.policy: Policy = make_policy(self.policy_cfg).to(self.device)
        self.policy.trained_on = dataset_record(run.dataset)  # checkpoints and in-training evals map with it
        self.normalizer = self.data.normalizer.to(self.device)
        if run.train.init_from and not resume:
            self._init_weights(run.train.init_from)
        self.model = self.dist.wrap(self.policy)
        t = run.train
        # fused: one kernel for the whole update instead of ~10 small ops per parameter tensor
        self.optimizer = torch.optim.AdamW(param_groups(self.policy, t.weight_decay), lr=t.lr, betas=tuple(t.betas),
                                           fused=True)
        from diffusers.optimization import get_cosine_schedule_with_warmup

        from vla.budget import Budget

        try:
            self.budget = Budget(t.steps, t.max_seconds, t.warmup_steps)
        except ValueError as e:

            raise ConfigError(f"train.{e}") from None
        # diffusers' warmup + cosine in steps; the budget remaps the step when time binds first
        cosine = get_cosine_schedule_with_warmup(self.optimizer, t.warmup_steps, t.steps).lr_lambdas[0]
        self.scheduler = self.budget.scheduler(self.optimizer, cosine)
        self.ema = None
        if t.ema_decay:
            from vla.ema import EMA

            try:  # of the trained tensors only: the frozen backbone is neither copied nor averaged
                self.ema = EMA(self.policy, t.ema_decay)
            except ValueError as e:
                raise ConfigError(f"train.{e}") from None
        self.step = 0
        self._entry_generator = torch.Generator().manual_seed(run.seed + 7919)  # per-entry loss batches
        if resume:
            self._load_training_state()

    def _init_weights(self, source: str) -> None:
        """Start from another run's weights (e.g. fine-tuning after action-free pretraining):
        every trainable tensor must exist there with the same shape; optimizer, schedule and
        normalization statistics start fresh from this run's data."""
        name, weights = load_trainable_weights(source)
        if name != self.policy_cfg.name:
            raise TrainingError(f"train.init_from: {source} holds a {name!r} policy, "
                                f"this run trains {self.policy_cfg.name!r}")
        own = self.policy.trainable_state_dict()
        new = self.policy.modules_new_in_finetuning()
        bad = sorted(k for k in own if (k not in weights and not k.startswith(new))
                     or (k in weights and weights[k].shape != own[k].shape))
        if bad:
            raise TrainingError(f"train.init_from: {source} does not match this policy's architecture "
                                f"({len(bad)} tensors differ, e.g. {bad[0]!r})")
        self.policy.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
        if self.dist.is_main:
            print(f"initialised {sum(k in weights for k in own)} of {len(own)} tensors from {source}")

    # --- resume --------------------------------------------------------------------------
    def _last(self) -> Path:
        last = self.out / "checkpoints" / "last"
        if not last.exists():
            raise TrainingError(f"--resume: no checkpoint in {self.out}/checkpoints to resume from")
        return last.resolve()

    def _resume_config(self) -> PolicyConfig:
        clean_stale_tmp(self.out)
        policy, _ = load_policy(str(self._last()), "cpu")  # validates the checkpoint as a whole
        return policy.config

    def _load_training_state(self) -> None:
        last = self._last()
        try:
            state = torch.load(last / STATE_DIR / "state.pt", map_location="cpu", weights_only=False)
        except Exception as e:
            raise CheckpointError(f"{last}: corrupt training state ({type(e).__name__})") from None
        self.policy.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.data.load_state_dict(state["data"])
        self.budget.load_state_dict(state.get("budget", {}))
        set_rng_state(state["rng"])
        self.step = state["step"]

    def _save(self) -> Path:
        weights = self.ema.weights(self.policy.trainable_state_dict()) if self.ema is not None else None
        state = {
            "step": self.step,
            "model": self.policy.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "data": self.data.state_dict(),
            "budget": self.budget.state_dict(),
            "rng": rng_state(),
            "run_config": asdict(self.run_cfg),
        }
        return save_checkpoint(self.out, self.step, self.policy, self.normalizer, state, weights,
                               self.policy.trained_on)

    # --- the loop --------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict[str, float]:
        batch = to_device(batch, self.device)
        if not self.data.normalized:  # a mixture's come normalized, per entry
            batch = normalize_batch(batch, self.normalizer)
        try:
            check_batch(batch, self.policy_cfg)  # shapes the config promises, before the model sees them
        except ValueError as e:
            raise TrainingError(f"batch at step {self.step}: {e}") from None
        use_amp = self.run_cfg.train.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, logs = self.model(batch)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at step {self.step}; lower train.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.run_cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        return {**logs, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}

    def run(self) -> Path | None:
        t = self.run_cfg.train
        log_every, save_every = (2, 4) if t.debug else (t.log_every, t.save_every)
        writer = self._writer()
        bar = tqdm(total=self.budget.bar_total(), initial=self.step, desc="train", unit="step",
                   disable=not (self.progress and self.dist.is_main))
        self.policy.train()
        last_ckpt, window, stopped, self.last_logs = None, [], None, {}
        self.budget.start()
        try:
            # every rank must agree to stop on time, or DDP would wait for a missing rank
            stopped = self.dist.agree(self.budget.exhausted(self.step))
            while not stopped:
                logs = self.train_step(self.data.next_batch())
                self.step += 1
                window.append(logs)
                bar.update(1)
                stopped = self.dist.agree(self.budget.exhausted(self.step))
                final = stopped is not None
                if self.step % log_every == 0 or final:
                    mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                    mean.update(self._entry_losses())
                    window, self.last_logs = [], mean
                    bar.set_postfix(loss=f"{mean['loss']:.4f}",
                                    **({"budget": self.budget.left()} if t.max_seconds else {}))
                    self._log(writer, mean, self.budget.elapsed())
                if self.dist.is_main and (self.step % save_every == 0 or final):
                    last_ckpt = self._save()
                if t.eval_every and self.step % t.eval_every == 0 and self.dist.is_main:
                    self._evaluate(writer)
                self.dist.barrier()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if self.dist.is_main:
            from vla.report import plot_training_curves

            plot_training_curves(self.out / "metrics.csv", self.out / "loss.png")
            if self.last_logs or not (self.out / "summary.json").exists():  # a resume with nothing left keeps it
                self._write_summary(stopped)
        return last_ckpt

    def _entry_losses(self) -> dict[str, float]:
        """A mixture's loss per entry (``loss/<name>``), each on a fresh batch of that entry alone
        drawn from its own stream, without gradients and with the random state restored, so the
        training run is the same with or without it. Empty for one dataset."""
        names = getattr(self.data, "names", None)  # a MixtureData's entries; a single dataset has none
        if not names:
            return {}
        n = max(4, self.run_cfg.train.batch_size // len(names))
        out = {}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            for i, name in enumerate(names):
                batch = to_device(self.data.entry_batch(i, n, self._entry_generator), self.device)
                out[f"loss/{name}"] = float(self.policy.compute_loss(batch)[0])
        return out

    def _write_summary(self, stopped: str) -> None:
        """``summary.json``: how far the run got and what it cost (what side-by-side tables read)."""
        import json

        summary = {"policy": self.policy_cfg.name, "steps": self.step, "stopped_by": stopped,
                   "samples_seen": self.step * self.run_cfg.train.batch_size * self.dist.world_size,
                   "train_seconds": round(self.budget.elapsed(), 1), "final_loss": self.last_logs.get("loss"),
                   "batch_size": self.run_cfg.train.batch_size, "world_size": self.dist.world_size,
                   "torch_threads": torch.get_num_threads()}
        tmp = self.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(self.out / "summary.json")

    def _writer(self):
        if not self.dist.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        self.out.mkdir(parents=True, exist_ok=True)
        return SummaryWriter(str(self.out / "tensorboard"))

    def _log(self, writer, logs: dict[str, float], elapsed: float) -> None:
        if writer is None:
            return
        for k, v in logs.items():
            writer.add_scalar(f"train/{k}", v, self.step)
        path = self.out / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "elapsed_s", *sorted(logs)])
            w.writerow([self.step, f"{elapsed:.1f}", *(f"{logs[k]:.6g}" for k in sorted(logs))])

    def _evaluate(self, writer) -> None:
        from vla.rollout import evaluate_policy

        self.policy.eval()
        with self.ema.applied() if self.ema is not None else nullcontext():
            result = evaluate_policy(self.policy, self.normalizer, self.run_cfg,
                                     episodes=self.run_cfg.train.eval_episodes,
                                     output_dir=self.out / "eval" / f"step_{self.step:06d}", progress=False)
        self.policy.train()
        writer.add_scalar("eval/success_rate", result["success_rate"], self.step)


def train(run: RunConfig, policy_cfg: PolicyConfig | None, *, resume: bool = False,
          progress: bool = True) -> Path | None:
    trainer = Trainer(run, policy_cfg, resume=resume, progress=progress)
    fresh = not trainer.out.exists()
    try:
        return trainer.run()
    except Exception:
        # a new run that fails before its first checkpoint (NaNs, a diverged loss) has nothing to
        # resume from: it leaves no half-made run directory behind (Ctrl-C keeps its logs)
        if fresh and trainer.dist.is_main and not (trainer.out / "checkpoints").exists():
            shutil.rmtree(trainer.out, ignore_errors=True)
        raise
    finally:
        trainer.dist.close()


def dataset_record(ds) -> dict:
    """What a checkpoint records of its ``dataset`` config (config.json ``data``): each dataset's
    id, root and feature mapping, a mixture's entries by name with their weights."""
    def about(entry) -> dict:
        return {"repo_id": entry.repo_id, "root": entry.root,
                "features": {k: v for k, v in asdict(entry.features).items() if v}}

    if ds.mixture:
        return {"mixture": [{"name": e.name, "weight": e.weight, **about(e)} for e in ds.mixture],
                "temperature": ds.temperature}
    return about(ds)
