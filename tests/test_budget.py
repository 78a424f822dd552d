"""Training budgets in wall-clock time: when a run stops, and where its LR schedule is."""

import pytest

import vla.budget
from vla.budget import Budget


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(vla.budget.time, "monotonic", c)
    return c


def test_without_a_time_limit_the_schedule_runs_in_steps(clock):
    b = Budget(steps=100, warmup_steps=10)
    b.start()
    clock.now += 1e6
    assert [b.virtual_step(s) for s in (0, 5, 10, 60, 100)] == [0, 5, 10, 60, 100]
    assert b.exhausted(99) is None and b.exhausted(100) == "steps"


def test_after_warmup_the_schedule_follows_the_time_when_it_binds_first(clock):
    b = Budget(steps=1000, max_seconds=100, warmup_steps=10)
    b.start()
    clock.now += 5
    assert b.virtual_step(5) == 5                      # warmup counts steps
    clock.now += 5                                      # warmup ends 10 s in
    assert b.virtual_step(10) == 10
    clock.now += 45                                     # half of the remaining 90 s
    assert b.virtual_step(20) == 10 + round(0.5 * 990)
    assert b.virtual_step(800) == 800                   # steps further along than time: steps win
    assert b.exhausted(20) is None
    clock.now += 45
    assert b.exhausted(21) == "time"
    assert b.virtual_step(21) == 1000                   # the decay has ended with the budget


def test_the_clock_carries_over_a_resume(clock):
    b = Budget(steps=1000, max_seconds=100, warmup_steps=0)
    b.start()
    clock.now += 30
    b.virtual_step(1)
    state = b.state_dict()
    resumed = Budget(steps=1000, max_seconds=100, warmup_steps=0)
    resumed.load_state_dict(state)
    assert resumed.elapsed() == pytest.approx(30)
    resumed.start()
    clock.now += 70
    assert resumed.exhausted(5) == "time"


def test_a_scheduler_evaluates_the_step_schedule_at_the_virtual_step(clock):
    import torch

    b = Budget(steps=100, max_seconds=10, warmup_steps=0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = b.scheduler(opt, lambda step: 1.0 - step / 100)  # linear decay over 100 steps
    b.start()
    clock.now += 5                                          # half the time, one step
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_a_bad_budget_is_refused():
    with pytest.raises(ValueError, match="max_seconds"):
        Budget(steps=10, max_seconds=0)
