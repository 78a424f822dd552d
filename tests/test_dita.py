"""Dita specifics: the exact prefix KV cache and the two presets."""

import torch

from tests.test_policy_contract import ACTION_DIM, raw_batch, tiny_config
from vla.policy import make_policy


def test_prefix_cache_is_exact():
    torch.manual_seed(0)
    cfg = tiny_config("dita")
    policy = make_policy(cfg).eval()
    obs = raw_batch(cfg, with_actions=False)
    obs["task"][1] = "a much longer instruction that fills more of the text token slots"  # padding differs per row
    noise = torch.randn(3, cfg.horizon, ACTION_DIM)
    cached = policy.sample_actions(obs, noise=noise, use_cache=True)
    uncached = policy.sample_actions(obs, noise=noise, use_cache=False)
    assert torch.allclose(cached, uncached, atol=1e-5), (cached - uncached).abs().max()


def test_prefix_never_attends_to_actions():
    """Changing the noisy actions must not change the prefix's hidden states (what makes the cache exact)."""
    torch.manual_seed(0)
    cfg = tiny_config("dita")
    policy = make_policy(cfg).eval()
    prefix = policy.prefix(raw_batch(cfg, with_actions=False))
    mask = policy._full_mask(prefix.mask)
    t = torch.full((3,), 0.5)

    def hidden(actions):
        x = torch.cat([prefix.tokens, policy._suffix(actions, t)], dim=1)
        return policy._run(x, mask, 0, None)[:, : policy.n_prefix]

    with torch.no_grad():
        h1 = hidden(torch.randn(3, cfg.horizon, ACTION_DIM))
        h2 = hidden(torch.randn(3, cfg.horizon, ACTION_DIM))
    assert torch.allclose(h1, h2, atol=1e-6)


def test_presets_have_the_documented_sizes():
    from vla.cli import compose

    _, small = compose(["policy=dita-small"])
    _, base = compose(["policy=dita-base"])
    assert (base.depth, base.width, base.heads) == (12, 768, 12)
    assert small.width < base.width and small.depth < base.depth
    assert small.noise.kind == "diffusion" and small.noise.num_inference_steps == 10


def test_shared_prefix_noise_samples_equal_repeated_batch():
    """noise_samples=K gives exactly the loss (and gradients) of the batch repeated K times."""
    torch.manual_seed(0)
    cfg = tiny_config("dita")
    cfg.noise_samples = 3
    policy = make_policy(cfg)
    batch = raw_batch(cfg)
    torch.manual_seed(5)
    shared, _ = policy.compute_loss(batch)
    shared.backward()
    grad_shared = policy.action_in.weight.grad.clone()
    policy.zero_grad()
    repeated = {k: (v.repeat_interleave(3, dim=0) if torch.is_tensor(v) else [x for x in v for _ in range(3)])
                for k, v in batch.items()}
    policy.config.noise_samples = 1
    torch.manual_seed(5)
    plain, _ = policy.compute_loss(repeated)
    plain.backward()
    torch.testing.assert_close(shared, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_shared, policy.action_in.weight.grad, rtol=1e-3, atol=1e-5)
