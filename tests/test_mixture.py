"""dataset.mixture: one policy trained on several datasets that differ in dimensions and cameras.

The two entries here: `lift`, recorded by vla's expert (state 11, action 7, cameras agentview and
wrist), and a dataset written with lerobot's own API in PushT's convention (state 4, action 3,
one 480x640 camera called observation.image, fed to both of the policy's cameras).
"""

import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from vla.config import DatasetConfig, FeatureMapConfig, MixtureEntry
from vla.data.mixture import MixtureData, check_entries, mixture_probabilities
from vla.errors import ConfigError, FeatureMismatchError
from vla.features import ACTION, ACTION_DIM_PAD, EMBODIMENT, OBS_STATE


def test_probabilities_follow_weights_sizes_and_temperature():
    assert np.allclose(mixture_probabilities([100, 300], [1, 1], 1.0), [0.25, 0.75])     # frames uniformly
    assert np.allclose(mixture_probabilities([100, 300], [3, 1], 1.0), [0.5, 0.5])       # weights scale shares
    assert np.allclose(mixture_probabilities([100, 400], [1, 1], 2.0), [1 / 3, 2 / 3])   # sqrt of the sizes
    flat = mixture_probabilities([100, 10_000], [1, 1], 1e6)
    assert np.allclose(flat, [0.5, 0.5], atol=1e-4)                                       # weights alone


@pytest.mark.parametrize("entries, temperature, message", [
    ([MixtureEntry(name="a"), MixtureEntry(name="a")], 1.0, r"dataset.mixture\[1\]: two entries are named 'a'"),
    ([MixtureEntry(name="a", weight=0)], 1.0, r"dataset.mixture\[0\] \(a\): weight must be > 0, got 0"),
    ([MixtureEntry(name="a", weight=-1.5)], 1.0, r"weight must be > 0"),
    ([MixtureEntry(name="")], 1.0, r"dataset.mixture\[0\]: every entry needs a name"),
    ([MixtureEntry(name="a")], 0.0, r"dataset.temperature must be > 0"),
])
def test_bad_mixtures_name_the_entry(entries, temperature, message):
    with pytest.raises(ConfigError, match=message):
        check_entries(entries, temperature)


def mixture_config(lift_dataset, pusht_style, **kwargs) -> DatasetConfig:
    both_cameras = {"agentview": "observation.image", "wrist": "observation.image"}
    return DatasetConfig(mixture=[
        MixtureEntry(name="lift", root=str(lift_dataset)),
        MixtureEntry(name="pusht", root=str(pusht_style), weight=3.0,
                     features=FeatureMapConfig(cameras=both_cameras)),
    ], **kwargs)


def tiny_dita():
    from vla.policy import policy_config_class

    return policy_config_class("dita")(width=32, depth=1, heads=2, n_obs_steps=1, horizon=4, n_action_steps=2)


def test_batches_are_normalized_per_entry_padded_and_tagged(lift_dataset, pusht_style):
    data = MixtureData(mixture_config(lift_dataset, pusht_style), tiny_dita(), seed=0, device=torch.device("cpu"),
                       num_workers=0, batch_size=64)
    cfg = data.policy_cfg
    assert (cfg.state_dim, cfg.action_dim, cfg.embodiments) == (11, 7, ["lift", "pusht"])
    assert data.state_dims == [11, 4] and data.action_dims == [7, 3]
    batch = data.next_batch()
    which = batch[EMBODIMENT]
    assert batch[OBS_STATE].shape == (64, 1, 11) and batch[ACTION].shape == (64, 4, 7)
    pusht = which == 1
    assert 0 < pusht.sum() < 64  # both entries drawn (weight 3 on 24 frames against ~2 x 100 of lift)
    assert batch[ACTION_DIM_PAD][pusht].tolist() == [[False] * 3 + [True] * 4] * int(pusht.sum())
    assert not batch[ACTION_DIM_PAD][~pusht].any()
    assert (batch[OBS_STATE][pusht][..., 4:] == 0).all() and (batch[ACTION][pusht][..., 3:] == 0).all()
    # pusht's own statistics: unnormalized with them, its samples are its raw states (100 + t, 200 + ep, .5, -.5)
    norm = data.normalizer.parts["pusht"]
    state = norm.unnormalize(OBS_STATE, batch[OBS_STATE][pusht][..., :4]).reshape(-1, 4)
    assert torch.allclose(state[:, 0], state[:, 0].round(), atol=1e-3) and state[:, 0].min() >= 100 - 1e-3
    assert state[:, 0].max() <= 111 + 1e-3 and set(state[:, 1].round().tolist()) <= {200.0, 201.0}
    assert torch.allclose(state[:, 2:], torch.tensor([0.5, -0.5]), atol=1e-4)
    assert batch[OBS_STATE][pusht][..., :4].abs().max() < 2.0
    # the per-entry loss batches: one entry's rows only
    alone = data.entry_batch(1, 8, torch.Generator().manual_seed(0))
    assert (alone[EMBODIMENT] == 1).all() and alone[ACTION_DIM_PAD][:, 3:].all()
    episodes = norm.unnormalize(OBS_STATE, alone[OBS_STATE][..., :4])[..., 1].round().flatten()
    assert set(episodes.tolist()) <= {200.0, 201.0}
    assert set(batch["frames"]) and batch["frames"]["vision"].shape[0] == 64 and len(batch["task"]) == 64


def test_a_policy_narrower_than_the_mixture_is_refused(lift_dataset, pusht_style):
    cfg = tiny_dita()
    cfg.action_dim = 3  # e.g. fixed by train.init_from's checkpoint
    with pytest.raises(FeatureMismatchError, match=r"dataset.mixture\[0\] \(lift\): 'action' has 7 values, more "
                                                   r"than policy.action_dim=3"):
        MixtureData(mixture_config(lift_dataset, pusht_style), cfg, seed=0, device=torch.device("cpu"),
                    num_workers=0, batch_size=4)


def test_an_entry_missing_a_key_is_named(lift_dataset, pusht_style):
    cfg = mixture_config(lift_dataset, pusht_style)
    cfg.mixture[1].features.cameras = {"agentview": "observation.images.top", "wrist": "observation.image"}
    with pytest.raises(FeatureMismatchError, match=r"dataset.mixture\[1\] \(pusht\): dataset.features.cameras."
                                                   r"agentview: the dataset has no key 'observation.images.top'"):
        MixtureData(cfg, tiny_dita(), seed=0, device=torch.device("cpu"), num_workers=0, batch_size=4)


def test_the_raw_path_mixes_the_same_way(lift_dataset, pusht_style):
    """A trainable backbone reads frames through lerobot: one loader over both datasets, each
    collated group finished by its entry (mapping, normalization, padding)."""
    data = MixtureData(mixture_config(lift_dataset, pusht_style, cache_features=False), tiny_dita(), seed=1,
                       device=torch.device("cpu"), num_workers=0, batch_size=16)
    batch = data.next_batch()
    assert batch[OBS_STATE].shape == (16, 1, 11) and batch["observation.images.agentview"].shape[-3:] == (3, 96, 96)
    pusht = batch[EMBODIMENT] == 1
    assert batch[ACTION_DIM_PAD][pusht, 3:].all() and not batch[ACTION_DIM_PAD][pusht, :3].any()
    assert batch["observation.images.wrist"].shape[-2:] == batch["observation.images.agentview"].shape[-2:]


def test_train_eval_and_resume_a_mixture(lift_dataset, pusht_style, tmp_path, capsys):
    """`vla train` on a mixture writes a checkpoint that knows both embodiments (statistics
    and widths per entry, an embodiment token); `vla eval` runs it as the one an env fits,
    and asks which when there are several; --resume continues the run."""
    from vla.cli import main

    out = tmp_path / "mix"
    entries = (f"dataset.mixture=[{{name: lift, root: '{lift_dataset}'}}, {{name: pusht, root: '{pusht_style}', "
               f"weight: 3, features: {{cameras: {{agentview: observation.image, wrist: observation.image}}}}}}]")
    assert main(["train", entries, f"output_dir={out}", "train.steps=2", "train.save_every=1", *TINY]) == 0
    model_dir = out / "checkpoints" / "last" / "pretrained_model"
    saved = json.loads((model_dir / "normalization.json").read_text())["embodiments"]
    assert {k: (v["state_dim"], v["action_dim"]) for k, v in saved.items()} == {"lift": (11, 7), "pusht": (4, 3)}
    config = json.loads((model_dir / "config.json").read_text())
    assert config["config"]["embodiments"] == ["lift", "pusht"]
    assert [e["name"] for e in config["data"]["mixture"]] == ["lift", "pusht"]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss/lift", "loss/pusht"} <= set(header)  # per-entry losses in the logs (and loss.png)
    assert (out / "loss.png").exists()

    evaluate = ["eval", "env=lift", f"output_dir={out}", "eval.episodes=1", "eval.n_envs=1",
                "env.max_episode_steps=4", "eval.max_videos=0"]
    assert main(evaluate) == 2
    assert "knows 2 embodiments (lift, pusht); choose one with eval.embodiment=<name>" in capsys.readouterr().err
    assert main([*evaluate, "eval.embodiment=sawyer"]) == 2
    assert "embodiment 'sawyer': this checkpoint knows lift, pusht" in capsys.readouterr().err
    assert main([*evaluate, "eval.embodiment=lift", f"eval.output_dir={tmp_path / 'eval'}"]) == 0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["episodes"] == 1
    # the checkpoint as a collection agent, as one of its embodiments
    collect = ["collect", "env=lift", f"collect.agent={out}", "collect.episodes=1", "collect.success_only=false",
               "env.max_episode_steps=3", "dataset.repo_id=local/rollouts"]
    assert main([*collect, f"dataset.root={tmp_path / 'refused'}"]) == 2
    assert "collect.embodiment" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert main([*collect, "collect.embodiment=lift", f"dataset.root={tmp_path / 'rollouts'}"]) == 0
    assert json.loads((tmp_path / "rollouts" / "meta" / "info.json").read_text())["total_frames"] == 3
    # deploy checks a robot against the embodiment it runs as: its widths, its camera under the dataset's key
    from types import SimpleNamespace

    from vla.checkpoint import load_policy
    from vla.deploy import check_compatible
    from vla.runtime import RuntimePolicy

    runtime = RuntimePolicy(*load_policy(str(out)), embodiment="pusht")

    def robot(state_dim: int, action_dim: int, camera: str = "observation.image"):  # a robot's feature lists
        features = {camera: {"shape": (96, 96, 3)}, OBS_STATE: {"shape": (state_dim,)}}
        return SimpleNamespace(observation_features=features, action_features={ACTION: {"shape": (action_dim,)}},
                               config=SimpleNamespace(cameras=["top"], action_space="eef_delta"))
    check_compatible(robot(4, 3), runtime)
    with pytest.raises(ValueError, match="expects 4 values, the robot gives 11"):
        check_compatible(robot(11, 3), runtime)
    with pytest.raises(ValueError, match=r"outputs 3 values"):
        check_compatible(robot(4, 7), runtime)
    with pytest.raises(ValueError, match=r"needs 'observation.images.agentview' \(nor 'observation.image', which"):
        check_compatible(robot(4, 3, camera="observation.images.top"), runtime)

    assert main(["train", "--resume", entries, f"output_dir={out}", "train.steps=3", *TINY]) == 0
    assert (out / "checkpoints" / "000003").exists()


@pytest.mark.parametrize("policy", ["dita", "dust", "omnijarvis"])
def test_every_policy_trains_on_a_mixture(policy, lift_dataset, pusht_style, tmp_path):
    """Each policy reads the embodiment token and keeps a narrower embodiment's padded action
    dimensions at exactly 0 through sampling, as they are in training (zero noise there, zero
    output there), so its real dimensions never see values training did not show; a CLI run on
    the mixture trains (OmniJARVIS: its tokenizer stage; stage 2 reads the expert's phase
    labels, which a dataset written elsewhere lacks)."""
    from tests.test_dust import TINY_DUST
    from tests.test_omnijarvis import TINY_OJ
    from vla.cli import compose, main
    from vla.policy import make_policy

    tiny = {"dita": TINY, "dust": TINY_DUST, "omnijarvis": TINY_OJ}[policy]
    run, policy_cfg = compose(tiny)
    data = MixtureData(mixture_config(lift_dataset, pusht_style), policy_cfg, seed=0, device=torch.device("cpu"),
                       num_workers=0, batch_size=8)
    model = make_policy(data.policy_cfg)
    assert model.backbone.num_tokens(1) == model.backbone.num_content_tokens(1) + 1
    batch = data.next_batch()
    loss, _ = model.compute_loss(batch)
    assert torch.isfinite(loss)
    batch[ACTION_DIM_PAD][:] = torch.arange(7) >= 3  # every sample as the 3-D embodiment
    model.eval()
    if policy == "omnijarvis":
        assert model.decoder.flow  # omnijarvis-small's flow decoder reads noisy actions (a binned one reads none)
        actions = model.reconstruct(batch, torch.zeros(8, dtype=torch.long))[0]
    else:
        actions = model.sample_actions(batch)
    assert (actions[..., 3:] == 0).all() and (actions[..., :3] != 0).any()

    entries = (f"dataset.mixture=[{{name: lift, root: '{lift_dataset}'}}, {{name: pusht, root: '{pusht_style}', "
               f"features: {{cameras: {{agentview: observation.image, wrist: observation.image}}}}}}]")
    assert main(["train", entries, f"output_dir={tmp_path / policy}", "train.steps=2", *tiny]) == 0


@pytest.mark.slow  # ~40 s of two processes' start-up; the single-process mixture tests cover the rest
def test_a_mixture_trains_under_ddp(lift_dataset, pusht_style, tmp_path):
    """Two gloo processes on a mixture: the main rank builds each entry's feature cache while
    the other waits, each rank draws its own samples, and the checkpoint knows both entries."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp-mix"
    entries = (f"dataset.mixture=[{{name: lift, root: '{lift_dataset}'}}, {{name: pusht, root: '{pusht_style}', "
               f"features: {{cameras: {{agentview: observation.image, wrist: null}}}}}}]")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
           "-m", "vla.cli", "train", entries, f"output_dir={out}", "train.steps=2", "train.save_every=2",
           "device=cpu", *TINY]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=380, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    saved = json.loads((out / "checkpoints" / "last" / "pretrained_model" / "normalization.json").read_text())
    assert sorted(saved["embodiments"]) == ["lift", "pusht"]


def test_omnijarvis_stage_two_reads_empty_thoughts_where_a_dataset_has_no_phase_labels(lift_dataset, pusht_style):
    """A dataset recorded elsewhere has no `annotation.phase`: stage 2 reads "" for its thoughts
    (the behavior tokens follow at once), beside an entry whose expert labelled its phases."""
    from tests.test_omnijarvis import TINY_OJ
    from vla.cli import compose
    from vla.features import PHASE
    from vla.policy import make_policy

    _, policy_cfg = compose([*TINY_OJ, "policy.stage=vla"])
    data = MixtureData(mixture_config(lift_dataset, pusht_style), policy_cfg, seed=0, device=torch.device("cpu"),
                       num_workers=0, batch_size=32)
    batch = data.next_batch()
    pusht = (batch[EMBODIMENT] == 1).tolist()
    assert any(pusht) and not all(pusht)
    thoughts = [row[-1] for row in batch[PHASE]]
    assert all(t == "" for t, p in zip(thoughts, pusht) if p)
    assert any(t for t, p in zip(thoughts, pusht) if not p)  # the lift expert's phase labels
    model = make_policy(data.policy_cfg)
    model.tokenizer_trained.fill_(True)
    loss, logs = model.compute_loss(batch)
    assert torch.isfinite(loss) and "thought_loss" in logs
    # one such dataset alone trains too
    from vla.config import DatasetConfig, FeatureMapConfig
    from vla.data.pipeline import TrainingData

    alone = TrainingData(DatasetConfig(repo_id="lab/pusht-style", root=str(pusht_style), features=FeatureMapConfig(
        cameras={"agentview": "observation.image", "wrist": "observation.image"})), policy_cfg, seed=0,
        device=torch.device("cpu"), num_workers=0, batch_size=4)
    assert alone.next_batch()[PHASE] == [[""] * len(policy_cfg.frame_offsets()[PHASE])] * 4
