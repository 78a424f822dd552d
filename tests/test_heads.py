"""Noise processes: the shared time convention, training targets and samplers."""

import pytest
import torch

from vla.heads import NoiseProcessConfig, make_noise_process, sinusoidal_embedding


@pytest.fixture(params=["diffusion", "flow"])
def process(request):
    return make_noise_process(NoiseProcessConfig(kind=request.param, num_inference_steps=10))


def test_times_follow_the_convention(process):
    t = process.sample_time(4096)
    assert t.shape == (4096,) and t.min() >= 0 and t.max() <= 1
    grid = process.sampling_times()
    assert len(grid) == 11 and grid[-1] == 0.0 and grid[0] > 0.9
    assert all(a > b for a, b in zip(grid[:-1], grid[1:])), "sampling walks from noise (t=1) to data (t=0)"


def test_t_zero_is_data_and_t_one_is_noise(process):
    x0, noise = torch.randn(3, 16, 7), torch.randn(3, 16, 7)
    near_data = process.add_noise(x0, noise, torch.zeros(3))
    near_noise = process.add_noise(x0, noise, torch.full((3,), 0.99))
    assert (near_data - x0).abs().mean() < (near_noise - x0).abs().mean()
    assert (near_noise - noise).abs().mean() < (near_noise - x0).abs().mean()


def test_flow_time_law_puts_mass_near_noise():
    p = make_noise_process(NoiseProcessConfig(kind="flow"))
    t = p.sample_time(20000)
    # Beta(1.5, 1) scaled into [0.001, 1]: mean 0.6 * 0.999 + 0.001
    assert abs(t.mean().item() - (0.6 * 0.999 + 0.001)) < 0.01
    assert t.min() >= 0.001


def test_perfect_model_recovers_data(process):
    """With the exact target as model output, the sampler must land on x0."""
    x0 = torch.rand(2, 16, 7) * 2 - 1
    noise = torch.randn_like(x0)
    grid = process.sampling_times()
    x = process.add_noise(x0, noise, torch.full((2,), grid[0])) if grid[0] < 1 else noise
    for t, t_next in zip(grid[:-1], grid[1:]):
        # the epsilon / velocity that is exactly consistent with x and x0 at time t
        if process.__class__.__name__ == "FlowMatchingProcess":
            out = (x - x0) / t
        else:
            a = process.train_scheduler.alphas_cumprod[int(round(t * process.T))]
            out = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = process.step(x, out, t, t_next)
    assert torch.allclose(x, x0, atol=1e-4)


def test_model_time_is_comparable_across_processes():
    d = make_noise_process(NoiseProcessConfig(kind="diffusion", num_train_timesteps=100))
    f = make_noise_process(NoiseProcessConfig(kind="flow"))
    assert d.model_time(torch.tensor([0.5])).item() == 50.0
    assert f.model_time(torch.tensor([0.5])).item() == 500.0


def test_unknown_kind_and_bad_steps():
    with pytest.raises(ValueError, match="unknown noise process"):
        make_noise_process(NoiseProcessConfig(kind="gan"))
    with pytest.raises(ValueError, match="exceeds"):
        make_noise_process(NoiseProcessConfig(kind="diffusion", num_train_timesteps=10, num_inference_steps=20))


def test_sinusoidal_embedding_shape_and_distinct():
    e = sinusoidal_embedding(torch.tensor([0.0, 1.0, 50.0]), 33)
    assert e.shape == (3, 33)
    assert not torch.allclose(e[1], e[2])
