"""vla.data.normalize: the four modes, guards, loud errors, and the checkpoint round trips."""

import datasets
import huggingface_hub
import numpy as np
import pytest
import torch
from torch import nn

from vla.data.normalize import Normalizer, compute_quantiles

D = 4
STATS = {
    "observation.state": {"mean": np.array([1.0, -2.0, 0.5, 3.0]), "std": np.array([2.0, 0.5, 1.0, 0.0]),
                          "min": np.array([-3.0, -3.0, 0.0, 3.0]), "max": np.array([5.0, -1.0, 1.0, 3.0]),
                          "count": np.array([100])},
    "action": {"min": np.array([-1.0, 0.0, -0.5, 2.0]), "max": np.array([1.0, 4.0, 0.5, 2.0]),
               "q01": np.array([-0.9, 0.5, -0.4, 2.0]), "q99": np.array([0.9, 3.5, 0.4, 2.0])},
    "observation.images.front": {"mean": np.full((3, 1, 1), 0.5), "std": np.array([[[0.1]], [[0.2]], [[0.25]]])},
}


def inside(low, high, shape=(8, 5), seed=0):
    """Values in [low, high] per dimension: (*shape, D)."""
    u = torch.rand(*shape, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (torch.as_tensor(low) + u * (torch.as_tensor(high) - torch.as_tensor(low))).float()


@pytest.mark.parametrize("mode,key", [("mean_std", "observation.state"), ("min_max", "observation.state"),
                                      ("quantile", "action"), ("identity", "action")])
def test_round_trip(mode, key):
    norm = Normalizer(STATS, {key: mode})
    bounds = ("q01", "q99") if mode == "quantile" else ("min", "max")
    low, high = (STATS[key][b] for b in bounds)
    x = inside(low, high)  # (8, 5, D): leading dims broadcast
    y = norm.normalize(key, x)
    assert y.shape == x.shape
    torch.testing.assert_close(norm.unnormalize(key, y), x, rtol=0, atol=1e-6)
    if mode == "identity":
        assert y is x


def test_min_max_and_quantile_land_in_unit_interval():
    norm = Normalizer(STATS, {"observation.state": "min_max", "action": "quantile"})
    lo, hi = (torch.tensor(STATS["observation.state"][b]).float() for b in ("min", "max"))
    torch.testing.assert_close(norm.normalize("observation.state", lo)[:3], torch.full((3,), -1.0))
    torch.testing.assert_close(norm.normalize("observation.state", hi)[:3], torch.full((3,), 1.0))
    y = norm.normalize("observation.state", inside(lo, hi, shape=(1000,)))
    assert y.min() >= -1 and y.max() <= 1

    wide = inside(STATS["action"]["min"] - 5, STATS["action"]["max"] + 5, shape=(1000,))  # beyond q01..q99
    y = norm.normalize("action", wide)
    assert y.min() == -1 and y.max() == 1, "quantile mode clips"
    q01 = torch.tensor(STATS["action"]["q01"]).float()
    torch.testing.assert_close(norm.normalize("action", q01)[:3], torch.full((3,), -1.0))


def test_constant_dimension_does_not_blow_up():
    # dim 3 has std 0 and min == max == 3: it maps to x - center, so the constant itself to 0
    norm = Normalizer(STATS, {"observation.state": "mean_std", "action": "min_max"})
    state = torch.tensor([1.0, -2.0, 0.5, 3.0])
    assert norm.normalize("observation.state", state).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert norm.normalize("action", torch.tensor([0.0, 2.0, 0.0, 2.5]))[3].item() == pytest.approx(0.5)


def test_image_stats_broadcast_over_channels():
    norm = Normalizer(STATS, {"observation.images.front": "mean_std"})
    images = torch.rand(2, 3, 3, 8, 8)  # (B, T, C, H, W)
    y = norm.normalize("observation.images.front", images)
    torch.testing.assert_close(y[:, :, 1], (images[:, :, 1] - 0.5) / 0.2)
    torch.testing.assert_close(norm.unnormalize("observation.images.front", y), images)


def test_missing_keys_are_loud():
    norm = Normalizer(STATS, {"action": "min_max"})
    with pytest.raises(KeyError, match="'observation.state'"):
        norm.normalize("observation.state", torch.zeros(D))
    with pytest.raises(KeyError, match="no feature 'observation.environment_state'"):
        Normalizer(STATS, {"observation.environment_state": "mean_std"})
    with pytest.raises(KeyError, match="'q01'.*compute_quantiles"):
        Normalizer(STATS, {"observation.state": "quantile"})
    with pytest.raises(ValueError, match="unknown normalization mode"):
        Normalizer(STATS, {"action": "z_score"})


def test_state_dict_round_trip_inside_a_policy():
    modes = {"observation.state": "mean_std", "action": "quantile", "observation.images.front": "mean_std"}

    class Policy(nn.Module):
        def __init__(self, stats):
            super().__init__()
            self.head = nn.Linear(D, D)
            self.normalizer = Normalizer(stats, modes)

    trained = Policy(STATS)
    restored = Policy(None)  # a checkpoint is loaded without the dataset at hand
    with pytest.raises(RuntimeError, match="empty"):
        restored.normalizer.normalize("action", torch.zeros(D))
    restored.load_state_dict(trained.state_dict())
    assert "normalizer.action__q99" in trained.state_dict()
    x = inside(STATS["action"]["q01"], STATS["action"]["q99"])
    assert torch.equal(restored.normalizer.normalize("action", x), trained.normalizer.normalize("action", x))
    assert restored.normalizer.observation__images__front__std.shape == (3, 1, 1)


def test_json_round_trip_is_exact():
    modes = {"observation.state": "mean_std", "action": "quantile", "observation.images.front": "identity"}
    norm = Normalizer(STATS, modes)
    text = norm.to_json()
    assert '"mode": "quantile"' in text
    back = Normalizer.from_json(text)
    assert back.modes == norm.modes
    for name, buffer in norm.state_dict().items():
        assert torch.equal(back.state_dict()[name], buffer), name


def test_compute_quantiles_reads_the_parquet_columns(tmp_path, monkeypatch):
    from vla.data.recorder import EpisodeRecorder
    from vla.data.source import open_dataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    features = {"observation.state": {"dtype": "float32", "shape": (2,), "names": None},
                "action": {"dtype": "float32", "shape": (3,), "names": None}}
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(2, 100, 3)).astype(np.float32)
    with EpisodeRecorder(tmp_path / "ds", features, task="t") as rec:
        for episode in actions:
            for a in episode:
                rec.add_frame({"observation.state": a[:2]}, a)
            rec.save_episode()
    ds = open_dataset(tmp_path / "ds")
    q = compute_quantiles(ds, ["action"])
    np.testing.assert_allclose(q["action"]["q01"], np.quantile(actions.reshape(-1, 3), 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(q["action"]["q99"], np.quantile(actions.reshape(-1, 3), 0.99, axis=0), rtol=1e-6)
    stats = {**ds.meta.stats, "action": {**ds.meta.stats["action"], **q["action"]}}
    y = Normalizer(stats, {"action": "quantile"}).normalize("action", torch.from_numpy(actions))
    assert y.min() == -1 and y.max() == 1
    assert ((y > -1) & (y < 1)).float().mean() > 0.97
