"""franky-sim in a separate process: a MuJoCo Franka that speaks the libfranka network protocol.

    with FrankySimServer() as sim:                      # headless, MuJoCo backend
        robot = make_robot(RobotConfig(backend="franky", franky_host=sim.host, cameras=[]))

franky-sim binds the first free 127.x.y.z loopback address and prints it, so several can run at
once; the server is ready when a franky client can connect. It steps MuJoCo at 1 kHz in wall-clock
time and has no realtime flag to set. A separate process, because a franky call into a wedged
simulator can block while holding the GIL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIM_MAIN = "import sys; from franky_sim.run_server import main; sys.argv[0] = 'franky-sim'; sys.exit(main())"


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
