"""franky-sim in a separate process: a MuJoCo Franka that speaks the libfranka network protocol.

    with FrankySimServer() as sim:                      # headless, MuJoCo backend
        robot = make_robot(RobotConfig(backend="franky", franky_host=sim.host, cameras=[]))

`home_franky_sim(host)` brings the arm to rest in HOME (Franka's ready pose) from a child process, as
the tests and benchmarks/franky_tracking.py do before each run.

franky-sim binds the first free 127.x.y.z loopback address and prints it, so several can run at
once; the server is ready when a franky client can connect. It steps MuJoCo at 1 kHz in wall-clock
time and has no realtime flag to set. A separate process, because a franky call into a wedged
simulator can block while holding the GIL.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIM_MAIN = "import sys; from franky_sim.run_server import main; sys.argv[0] = 'franky-sim'; sys.exit(main())"

# Franka's "ready" pose. Not franky-sim's start pose (q2 = 0), where joints 1 and 3 align and the
# simulator's IK-based Cartesian control drifts.
HOME = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)

# Homing runs in a child process: a franky call into a wedged simulator can block while holding
# the GIL, where no timeout in the calling process can interrupt it, and a subprocess timeout always can.
HOME_SCRIPT = """
import sys, time, numpy as np, franky
host, home = sys.argv[1], np.array([float(v) for v in sys.argv[2:]])
robot = franky.Robot(host, relative_dynamics_factor=0.5, realtime_config=franky.RealtimeConfig.Ignore)
robot.recover_from_errors()
robot.move(franky.JointMotion(home), asynchronous=True)
if not robot.join_motion(timeout=10.0):
    sys.exit("the arm did not reach HOME")
deadline = time.monotonic() + 5.0  # the simulated joints settle a little after the motion ends
while np.abs(np.asarray(robot.state.q) - home).max() > 3e-3:
    if time.monotonic() > deadline:
        sys.exit(f"the arm settled at {np.round(robot.state.q, 3)}, not HOME")
    time.sleep(0.05)
gripper = franky.Gripper(host)
if abs(gripper.width - 0.04) > 0.005:
    gripper.move(0.04, 0.1)
"""


def home_franky_sim(host: str, q=HOME, timeout: float = 30.0) -> None:
    """Bring the simulated arm to rest at `q` and its gripper half open, from a child process.

    Raises subprocess.CalledProcessError (stderr says why) or subprocess.TimeoutExpired (a wedged simulator,
    or another franky.Robot still connected to it: release those first, franky-sim then never answers).
    """
    subprocess.run([sys.executable, "-c", HOME_SCRIPT, host, *map(str, q)], check=True, timeout=timeout,
                   capture_output=True, text=True)


def start_franky_sim(log: Path, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start `franky-sim -s mujoco`; wait until a client can connect. Returns (process, host)."""
    import franky

    from vla.scheduling import keeps_thread_scheduling

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SIM_MAIN, "-s", "mujoco"], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    host = None
    try:
        while host is None:
            match = re.search(r"Connect to the server using '([^']+)'", log.read_text())
            if match:
                host = match.group(1)
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"franky-sim did not start:\n{log.read_text()[-2000:]}")
            else:
                time.sleep(0.05)
        while True:  # the server prints its address once bound; poll until the FCI answers
            try:
                with keeps_thread_scheduling():
                    probe = franky.Robot(host, realtime_config=franky.RealtimeConfig.Ignore)
                del probe
                return proc, host
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def stop_franky_sim(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


class FrankySimServer:
    """Context manager around one franky-sim process; `host` is its address."""

    def __init__(self, log: Path | None = None):
        self.log = log or Path(tempfile.mkdtemp(prefix="franky-sim-")) / "franky-sim.log"

    def __enter__(self) -> FrankySimServer:
        self.proc, self.host = start_franky_sim(self.log)
        return self

    def __exit__(self, *exc) -> None:
        stop_franky_sim(self.proc)
