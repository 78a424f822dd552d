"""The EMA of trained tensors: torch's AveragedModel's numbers, without copying what is frozen."""

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vla.ema import EMA


def frozen_encoder_and_head() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model[0].requires_grad_(False)  # a frozen pretrained encoder
    return model


def train_a_few_steps(model: nn.Module, ema_update, steps: int = 5) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(steps):
        x = torch.randn(16, 6, generator=torch.Generator().manual_seed(step))
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update()


def test_matches_torch_averaged_model_on_what_trains():
    a, b = frozen_encoder_and_head(), frozen_encoder_and_head()
    ours = EMA(a, 0.9)
    reference = AveragedModel(b, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    reference.update_parameters(b)  # AveragedModel's first update copies the weights, as EMA's start does
    train_a_few_steps(a, ours.update)
    train_a_few_steps(b, lambda: reference.update_parameters(b))
    expected = reference.module.state_dict()
    for name in ["1.weight", "1.bias", "1.running_mean", "1.running_var", "2.weight", "2.bias"]:
        torch.testing.assert_close(ours.shadow[name], expected[name], msg=name)
    # the averages differ from the live weights (five steps at decay 0.9 lag behind)
    assert not torch.allclose(ours.shadow["2.weight"], a[2].weight)


def test_frozen_weights_are_neither_copied_nor_averaged():
    model = frozen_encoder_and_head()
    ema = EMA(model, 0.99)
    assert not any(name.startswith("0.") for name in ema.shadow)
    assert "1.num_batches_tracked" not in ema.shadow  # integer counters are not averaged
    weights = ema.weights(model.state_dict())
    assert torch.equal(weights["0.weight"], model[0].weight)
    assert set(weights) == set(model.state_dict())


def test_applied_swaps_the_averages_in_and_restores_the_live_weights():
    model = frozen_encoder_and_head()
    ema = EMA(model, 0.5)
    train_a_few_steps(model, ema.update)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied():
        torch.testing.assert_close(model[2].weight, ema.shadow["2.weight"])
        torch.testing.assert_close(model[1].running_mean, ema.shadow["1.running_mean"])
        assert not torch.equal(model[2].weight, live["2.weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, live[k]), k


def test_state_round_trips_and_reads_an_averaged_model_checkpoint():
    model = frozen_encoder_and_head()
    ema = EMA(model, 0.9)
    train_a_few_steps(model, ema.update)
    restored = EMA(frozen_encoder_and_head(), 0.9)
    restored.load_state_dict(ema.state_dict())
    for k in ema.shadow:
        assert torch.equal(restored.shadow[k], ema.shadow[k])
    # a run saved with torch's AveragedModel (before this class) resumes with its averages
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    old = EMA(frozen_encoder_and_head(), 0.9)
    old.load_state_dict(reference.state_dict())
    torch.testing.assert_close(old.shadow["2.weight"], model[2].weight)
    with pytest.raises(KeyError, match="lacks"):
        old.load_state_dict({"decay": 0.9, "shadow": {}})


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_a_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(frozen_encoder_and_head(), decay)
