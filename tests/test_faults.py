"""Fault injection: a policy deployed to the digital twin through real bridges while things go wrong.

For every fault: no command outside the limits reaches the arm, the arm holds within one control
period of the fault being detected (or, with the link gone, by the twin's own command timeout),
the run ends with a message naming the fault, and every step up to it is recorded.
"""

import pytest

from benchmarks.fault_injection import SCENARIOS, run_scenario

pytestmark = pytest.mark.timeout(600)

EXPECTED = {  # scenario -> words the stop message must contain
    "nan_action": "non_finite", "out_of_range": "persistent_limit", "large_jump": "persistent_limit",
    "stale_observation": "stale_observation", "link_dropped": "link_lost",
    "latency_spike": "no action chunk", "bridge_restarted": "link_lost",
}


@pytest.fixture(scope="module")
def runtime(trained_run):
    from vla.checkpoint import load_policy
    from vla.runtime import RuntimePolicy

    return RuntimePolicy(*load_policy(str(trained_run)))


@pytest.fixture(scope="module")
def bridge(twin):
    from envs.robot.rosbridge_server import RosbridgeServer

    with RosbridgeServer(port=0) as server:
        yield server


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fault_holds_the_arm_and_ends_the_run(scenario, runtime, twin, bridge, tmp_path):
    r = run_scenario(scenario, runtime, twin, tmp_path / scenario, bridge=bridge)
    assert r.stopped == "fault" and EXPECTED[scenario] in r.message and "holding" in r.message
    assert r.violations == []  # nothing outside the limits reached the arm
    assert r.frames_recorded == r.steps > 0  # every step up to the fault is in the dataset
    assert r.commands_received > 0
    period = 0.05
    if r.held_by == "driver":
        assert r.hold_after_s <= period
    else:  # the link is gone: the twin's own command timeout holds the arm
        assert scenario in ("link_dropped", "bridge_restarted") and r.held_by == "twin timeout"
        assert r.hold_after_s <= twin.command_timeout + period
    if scenario in ("out_of_range", "large_jump"):
        assert r.commands_changed >= 10
