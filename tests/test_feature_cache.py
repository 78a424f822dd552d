"""The frozen-feature cache serves any subset of the episodes it holds, row for row."""

import numpy as np
import torch

from vla.backbone import make_backbone
from vla.config import DatasetConfig
from vla.data.cache import build_feature_cache
from vla.data.pipeline import open_configured
from vla.policy import policy_config_class


def _backbone():
    cfg = policy_config_class("dita")()
    return make_backbone(cfg.backbone, width=8, n_obs_steps=cfg.n_obs_steps, state_dim=11).eval()


def _open(root, episodes=None):
    return open_configured(DatasetConfig(root=str(root), repo_id="local/lift", episodes=episodes))


def test_a_subset_reads_the_whole_datasets_cache_row_for_row(lift_dataset, tmp_path):
    backbone, cache = _backbone(), tmp_path / "cache"
    whole = build_feature_cache(_open(lift_dataset), backbone, cache_dir=cache, progress=False)
    files = sorted(cache.iterdir())
    subset = _open(lift_dataset, [1])
    rows = torch.from_numpy(np.asarray(subset.hf_dataset.with_format("numpy")["index"]))
    part = build_feature_cache(subset, backbone, cache_dir=cache, progress=False)
    assert sorted(cache.iterdir()) == files, "the subset was served from the whole dataset's cache"
    assert 0 < len(rows) < len(whole["index"])
    assert torch.equal(part["index"], rows)
    for key in [k for k in whole if k.startswith("frames.")] + ["task_index"]:
        assert torch.equal(part[key], whole[key][rows]), key
    text_keys = [k for k in whole if k.startswith("text.")]
    assert text_keys and all(torch.equal(part[k], whole[k]) for k in text_keys)


def test_a_subset_cached_first_gets_its_own_file_and_the_whole_dataset_a_new_one(lift_dataset, tmp_path):
    backbone, cache = _backbone(), tmp_path / "cache"
    first = build_feature_cache(_open(lift_dataset, [0]), backbone, cache_dir=cache, progress=False)
    assert len(list(cache.iterdir())) == 1
    whole = build_feature_cache(_open(lift_dataset), backbone, cache_dir=cache, progress=False)
    assert len(list(cache.iterdir())) == 2 and len(whole["index"]) > len(first["index"])
    again = build_feature_cache(_open(lift_dataset, [0]), backbone, cache_dir=cache, progress=False)
    assert len(list(cache.iterdir())) == 2
    for key in [k for k in first if k.startswith("frames.")]:
        torch.testing.assert_close(again[key], first[key])  # the same frames, from either file
