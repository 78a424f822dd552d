"""Training-time real-time chunking: committed actions as the policy's input (vla/heads/committed.py),
trained into Dita and DUST, served through the runtime and deploy (``deploy.rtc_method=condition``)."""

import json

import numpy as np
import pytest
import torch

from tests.test_policy_contract import raw_batch, tiny_config
from tests.test_rtc import _runtime, observation
from vla.chunking import ChunkPrefix, prefix_weights
from vla.cli import main
from vla.features import ACTION, ACTION_PREFIX
from vla.heads.committed import committed_from_weights, sample_committed
from vla.heads.guidance import ActionPrefix
from vla.policy import make_policy


def test_committed_positions_are_a_uniform_prefix_of_at_most_max_delay():
    torch.manual_seed(0)
    committed = sample_committed(4000, horizon=8, max_delay=3, device="cpu")
    counts = committed.sum(1)
    # each row is a prefix: once False, False to the end
    assert (committed[:, 1:] <= committed[:, :-1]).all()
    frequencies = torch.bincount(counts, minlength=8).float() / len(counts)
    assert (frequencies[4:] == 0).all()
    torch.testing.assert_close(frequencies[:4], torch.full((4,), 0.25), atol=0.03, rtol=0)
    # from a chunk prefix's weights: the frozen ones (weight 1), at most what the policy was trained on
    weights = torch.tensor(np.stack([prefix_weights(2, 6, 8), prefix_weights(5, 6, 8, "hard")]))
    assert committed_from_weights(weights, 3).sum(1).tolist() == [2, 3]


def constant_chunks(b, h, d, generator):
    """(B, H, D) chunks whose every action is one per-row value: the observation cannot tell it,
    the first committed action can."""
    level = torch.rand(b, 1, 1, generator=generator) * 1.6 - 0.8
    return level.expand(b, h, d).clone()


@pytest.mark.parametrize("name", ["dita", "dust"])
def test_policies_learn_to_continue_the_committed_actions(name):
    """The data's chunks are constants the observation does not reveal. Trained with committed
    actions, the policy continues whatever the plan committed to; without them it cannot know the level."""
    torch.manual_seed(0)
    cfg = tiny_config(name)
    cfg.rtc_train_max_delay, cfg.noise_samples = 3, 8  # 8 noise levels per observation: cheaper samples
    policy = make_policy(cfg)
    base = raw_batch(cfg)
    b = 4

    def first_row(v):  # every row the same observation
        if isinstance(v, dict):
            return {k: first_row(x) for k, x in v.items()}
        return v[:1].expand(b, *v.shape[1:]) if torch.is_tensor(v) else [v[0]] * b

    batch = {k: first_row(v) for k, v in base.items()}
    batch["action_is_pad"] = torch.zeros(b, cfg.horizon, dtype=torch.bool)
    with torch.no_grad():  # the frozen encoders' features once, as the feature cache holds them
        batch["frames"], batch["text"] = policy.encode_observation(batch)
        if "future_images" in batch:  # DUST's world-model target
            batch["future_frames"] = policy.encode_future(batch)
    batch = {k: v for k, v in batch.items() if not k.startswith("observation.images") and k != "future_images"}
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(400):
        batch[ACTION] = constant_chunks(b, cfg.horizon, cfg.action_dim, gen)
        loss, logs = policy.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    obs = {k: v for k, v in batch.items() if k not in (ACTION, "action_is_pad")}
    plan = constant_chunks(b, cfg.horizon, cfg.action_dim, gen)
    weights = torch.tensor(prefix_weights(2, cfg.horizon, cfg.horizon, "hard"))[None].expand(b, -1)
    noise = torch.randn(b, cfg.horizon, cfg.action_dim)
    conditioned = policy.sample_actions({**obs, ACTION_PREFIX: ActionPrefix(plan, weights, method="condition")},
                                        noise=noise)
    plain = policy.sample_actions(obs, noise=noise)
    torch.testing.assert_close(conditioned[:, :2], plan[:, :2])  # the committed actions come back as given
    error = lambda x: (x[:, 2:] - plan[:, 2:]).abs().mean().item()  # noqa: E731
    assert error(conditioned) < 0.12 < 0.25 < error(plain)


def test_committed_actions_are_refused_where_they_were_not_trained():
    cfg = tiny_config("omnijarvis")
    cfg.rtc_train_max_delay = 2
    with pytest.raises(ValueError, match="cannot take committed actions"):
        make_policy(cfg)
    cfg = tiny_config("dita")
    cfg.rtc_train_max_delay = cfg.horizon
    with pytest.raises(ValueError, match="rtc_train_max_delay"):
        make_policy(cfg)
    runtime = _runtime("dita")  # trained without them
    assert runtime.committed_max_delay == 0
    with pytest.raises(ValueError, match="not trained with committed actions"):
        runtime.predict_chunk([observation()], 0, ChunkPrefix(np.ones((6, 7)), delay=3, method="condition"))


@pytest.fixture(scope="module")
def committed_run(tmp_path_factory, lift_dataset):
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("runs") / "committed"
    assert main(["train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=2", *TINY,
                 "policy.rtc_train_max_delay=2"]) == 0
    return out


def test_deploy_conditions_on_the_plan_through_a_checkpoint(committed_run, trained_run, tmp_path, capsys):
    """The setting travels in the checkpoint; deploy hands the plan in as committed actions, and
    refuses condition for a checkpoint trained without it (exit 2, nothing written)."""
    from vla.checkpoint import load_policy
    from vla.runtime import RuntimePolicy

    runtime = RuntimePolicy(*load_policy(str(committed_run)))
    assert runtime.committed_max_delay == 2
    plan = np.full((6, runtime.action_dim), 0.01, dtype=np.float32)
    chunk = runtime.predict_chunk([observation()], 0, ChunkPrefix(plan, delay=2, method="condition"))
    np.testing.assert_allclose(chunk[:2], plan[:2], atol=1e-5)  # handed back as committed, in raw units
    out = tmp_path / "deploy"
    base = ["deploy", f"deploy.output_dir={out}", "deploy.max_steps=8", "deploy.async_inference=false",
            "deploy.record=false", "deploy.stop_on_success=false", "deploy.rtc=true", "deploy.rtc_method=condition",
            "deploy.inject_delay_ms=100"]
    assert main([*base, f"deploy.checkpoint={committed_run}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["rtc_method"] == "condition" and summary["stale_actions_skipped"] >= 2
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert main([*base, f"deploy.checkpoint={trained_run}", f"deploy.output_dir={refused}"]) == 2
    assert "policy.rtc_train_max_delay" in capsys.readouterr().err and not refused.exists()


def test_the_rtc_benchmark_runs_a_committed_checkpoint_under_its_own_label(committed_run, tmp_path):
    from benchmarks import rtc

    rtc.main(["--checkpoint", str(committed_run), "--episodes", "1", "--max-steps", "6", "--delays", "100",
              "--modes", "rtc-condition", "--label", "lift-committed", "--out", str(tmp_path / "rtc"),
              "--results", str(tmp_path / "rtc.json"), "--markdown", str(tmp_path / "RESULTS.md")])
    rows = json.loads((tmp_path / "rtc.json").read_text())
    assert list(rows) == ["lift-committed|100|rtc-condition"]
    assert "deploy.rtc_method=condition" in rows["lift-committed|100|rtc-condition"]["command"]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- BEGIN rtc-lift-committed -->" in text and "--label lift-committed" in text


def test_the_committed_probe_measures_both_kinds_of_checkpoint(committed_run, trained_run, lift_dataset, tmp_path,
                                                               capsys):
    from benchmarks import committed_probe

    results = tmp_path / "probe.json"
    committed_probe.main(["--dataset", str(lift_dataset), "--repo-id", "local/lift", "--checkpoints", str(trained_run),
                          str(committed_run), "--delay", "2", "--batches", "1", "--batch-size", "8",
                          "--results", str(results)])
    rows = json.loads(results.read_text())
    assert set(rows[str(trained_run)]) == {"delay", "samples", "d0", "d0_other_obs"}
    probed = rows[str(committed_run)]
    assert {"committed", "committed_other_obs"} <= set(probed) and probed["samples"] == 8
    assert all(np.isfinite(v) and v > 0 for k, v in probed.items() if k not in ("delay", "samples"))
    assert "committed_other_obs" in capsys.readouterr().out
