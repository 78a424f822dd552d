"""Reproducible sampling at run time (vla/seeding.py): a chunk's noise comes from the episode's seed
and the step, in-process, batched, deployed and for LeRobot checkpoints; the global RNG is untouched."""

import json

import numpy as np
import torch

from tests.test_rtc import _runtime, observation
from vla.cli import main
from vla.seeding import sampling_seed


def test_the_seed_is_a_function_of_every_envs_seed_and_step():
    assert sampling_seed([1, 2], [0, 5]) == sampling_seed([1, 2], [0, 5])
    assert len({sampling_seed([1, 2], [0, 5]), sampling_seed([1, 3], [0, 5]), sampling_seed([1, 2], [0, 6]),
                sampling_seed([2, 1], [5, 0])}) == 4
    assert sampling_seed([1, None], [0, 0]) is None and sampling_seed([], []) is None
    assert sampling_seed([-1], [0]) == sampling_seed([2**64 - 1], [0])  # a negative seed is still one seed


def test_a_seeded_chunk_samples_again_and_leaves_the_global_rng_alone():
    runtime = _runtime("dita")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    first = runtime.predict_chunk([observation()], 3, seed=7)
    torch.testing.assert_close(torch.rand(3), expected)  # as if nothing had been drawn
    np.testing.assert_array_equal(first, runtime.predict_chunk([observation()], 3, seed=7))
    for other in (runtime.predict_chunk([observation()], 3, seed=8), runtime.predict_chunk([observation()], 4, seed=7),
                  runtime.predict_chunk([observation()], 3)):
        assert not np.allclose(first, other, atol=1e-3)


def _batch(n):
    obs = [observation(i) for i in range(n)]
    return {k: ([o[k] for o in obs] if isinstance(obs[0][k], str) else np.stack([o[k] for o in obs])) for k in obs[0]}


def test_batched_envs_with_episode_seeds_act_the_same_again():
    runtime = _runtime("dust")
    obs = _batch(2)

    def actions(seeds):
        runtime.reset(seeds=seeds)
        return np.stack([runtime.act(obs) for _ in range(3)])

    np.testing.assert_array_equal(actions([10, 11]), actions([10, 11]))
    assert not np.allclose(actions([10, 11]), actions([10, 12]), atol=1e-4)
    assert not np.allclose(actions(None), actions(None), atol=1e-4)  # no seeds: the global RNG, as before
    # an env reset mid-run with its new episode's seed keeps the run reproducible
    runs = []
    for _ in range(2):
        runtime.reset(seeds=[10, 11])
        runtime.act(obs)
        runtime.reset([1], seeds=[12])
        runs.append(np.stack([runtime.act(obs) for _ in range(2)]))
    np.testing.assert_array_equal(*runs)


def test_a_deploy_rerun_on_the_same_seeds_sends_the_same_commands(trained_run, tmp_path):
    def deploy(name, seed):
        out = tmp_path / name
        assert main(["deploy", f"deploy.checkpoint={trained_run}", f"deploy.output_dir={out}", "deploy.max_steps=10",
                     "deploy.async_inference=false", "deploy.record=false", "deploy.stop_on_success=false",
                     "deploy.episodes=2", f"deploy.seed={seed}"]) == 0
        s = json.loads((out / "summary.json").read_text())
        return s["boundary_jerk"], s["within_chunk_jerk"]

    assert deploy("a", 5) == deploy("b", 5)
    assert deploy("c", 6) != deploy("a", 5)


def test_a_lerobot_runtime_draws_each_envs_noise_from_its_own_seed(monkeypatch, act_run):
    """ACT samples no noise at eval, so its select_action is made to draw some: each env's draw
    then depends on its own episode seed and step only, not on the other envs'."""
    from tests.test_lerobot_policy import _observations, _runtime as lerobot_runtime

    runtime = lerobot_runtime(act_run)
    cls = type(runtime.policy)
    real = cls.select_action
    monkeypatch.setattr(cls, "select_action", lambda self, batch: real(self, batch) + torch.randn(1, 7))
    obs = _observations(2)

    def actions(seeds):
        runtime.reset(seeds=seeds)
        return np.stack([runtime.act(obs) for _ in range(2)])

    same, other = actions([3, 4]), actions([3, 9])
    np.testing.assert_array_equal(same, actions([3, 4]))
    np.testing.assert_array_equal(same[:, 0], other[:, 0])  # env 0: its own seed, its own noise
    assert not np.allclose(same[:, 1], other[:, 1], atol=1e-4)
