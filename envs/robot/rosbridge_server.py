"""Run a rosbridge websocket server (rosbridge-server-rs) on the ROS 2 wheels of this venv.

The `rosbridge` backend talks to the robot's ROS 2 graph through a rosbridge websocket server.
The PyPI package ``rosbridge-server-rs`` ships that server as prebuilt binaries
(``rosbridge_server_rs_jazzy`` / ``rosbridge_server_rs_humble``), but its launcher expects a sourced
ROS 2. This module gives the binary the environment a sourced ROS 2 Jazzy would, built from the
ROS wheels installed in the venv (ros-jazzy-rclpy, rmw-fastrtps-cpp, the message packages):

    ROS_DISTRO=jazzy
    AMENT_PREFIX_PATH=<venv>                        where share/ament_index lives
    LD_LIBRARY_PATH=<cache>/rmw_fastrtps_cpp:<venv>/lib:<site-packages>/*.libs
                                                    the cache dir holds librmw_implementation.so ->
                                                    <venv>/lib/librmw_fastrtps_cpp.so (the wheels have
                                                    no rmw_implementation dispatcher library)
    LD_PRELOAD=<libpython3.X.so.1.0>                the wheels' *_rosidl_generator_py.so libraries,
                                                    which the server loads, need the Python C API

and always runs it with ``--no-rosapi`` (the wheels lack rosapi_msgs, and the server exits at start
without it). So rosapi calls (roslibpy ``Ros.get_topics`` and friends) are not available.

    from envs.robot.rosbridge_server import RosbridgeServer

    with RosbridgeServer(port=0) as server:           # port=0: pick a free port
        ros = roslibpy.Ros("127.0.0.1", server.port)

From a shell (no sourced ROS needed):

    python -m envs.robot.rosbridge_server --port 9090          # foreground until Ctrl-C

The server joins the DDS domain in ``ROS_DOMAIN_ID`` (inherited from the environment, or pass
``domain_id=``). Readiness is a plain TCP connect to the port, which the server logs once per start
as ``WARN ... Handshake not finished`` (harmless). Nothing here imports torch or rclpy.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from vla.errors import RobotError

SUPPORTED_DISTROS = ("humble", "jazzy")
DEFAULT_RMW = "rmw_fastrtps_cpp"
ROS_WHEELS_HINT = "pip install ros-jazzy-rclpy ros-jazzy-rmw-fastrtps-cpp ros-jazzy-sensor-msgs"


class RosbridgeServerError(RobotError):
    """The rosbridge server cannot be set up, started or kept running; one-line message."""


# --------------------------------------------------------------------------------------- environment

def cache_dir() -> Path:
    """Where the rmw symlink (and, if the venv is read-only, an executable copy of the binary) live."""
    return Path(os.environ.get("VLA_CACHE", Path.home() / ".cache" / "vla")) / "rosbridge"


def _package_dir() -> Path:
    spec = importlib.util.find_spec("rosbridge_server_rs")
    if spec is None or not spec.submodule_search_locations:
        raise RosbridgeServerError("rosbridge-server-rs is not installed: pip install rosbridge-server-rs==0.1.6")
    return Path(next(iter(spec.submodule_search_locations)))


def server_binary(distro: str = "jazzy") -> Path:
    """The bundled server binary for ``distro``, made executable (chmod, or an executable copy in
    the cache when the package directory is read-only)."""
    if distro not in SUPPORTED_DISTROS:
        raise RosbridgeServerError(f"rosbridge-server-rs supports ROS_DISTRO {SUPPORTED_DISTROS}, not {distro!r}")
    binary = _package_dir() / f"rosbridge_server_rs_{distro}"
    if not binary.is_file():
        raise RosbridgeServerError(f"{binary} is missing; reinstall rosbridge-server-rs==0.1.6")
    if os.access(binary, os.X_OK):
        return binary
    try:                                    # wheels install it 0644; add x where r is set
        mode = binary.stat().st_mode
        binary.chmod(mode | ((mode & 0o444) >> 2))
        if os.access(binary, os.X_OK):
            return binary
    except OSError:
        pass
    copy = cache_dir() / "bin" / binary.name
    src = binary.stat()
    if not (copy.is_file() and copy.stat().st_size == src.st_size and copy.stat().st_mtime >= src.st_mtime
            and os.access(copy, os.X_OK)):
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_name(f".{copy.name}.{os.getpid()}")
        tmp.write_bytes(binary.read_bytes())
        tmp.chmod(0o755)
        os.replace(tmp, copy)
    return copy


def libpython() -> Path:
    """This interpreter's shared libpython (the server's LD_PRELOAD)."""
    names = [sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LDLIBRARY"),
             f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"]
    dirs = [sysconfig.get_config_var("LIBDIR"), Path(sys.base_prefix) / "lib"]
    for d in dirs:
        for name in names:
            if d and name and name.endswith((".so", ".so.1.0")) and (Path(d) / name).is_file():
                return Path(d) / name
    raise RosbridgeServerError(
        f"no shared libpython for {sys.executable} (looked in {sysconfig.get_config_var('LIBDIR')}); "
        "the rosbridge server needs a Python built with --enable-shared")


def _symlink(link: Path, target: Path) -> None:
    """Point ``link`` at ``target``, atomically and only if it does not already."""
    try:
        if os.readlink(link) == str(target):
            return
    except OSError:
        pass
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def rosbridge_server_env(venv_prefix: str | os.PathLike = sys.prefix, rmw: str = DEFAULT_RMW,
                         distro: str = "jazzy") -> dict[str, str]:
    """The variables a sourced ROS 2 would set, for the ROS wheels installed under ``venv_prefix``.

    Merge them over ``os.environ`` to run the server binary. Raises RosbridgeServerError (one line)
    when the wheels are missing.
    """
    if distro not in SUPPORTED_DISTROS:
        raise RosbridgeServerError(f"rosbridge-server-rs supports ROS_DISTRO {SUPPORTED_DISTROS}, not {distro!r}")
    prefix = Path(venv_prefix).resolve()
    lib = prefix / "lib"
    site = lib / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    rmw_lib = lib / f"lib{rmw}.so"
    for needed in (lib / "librcl.so", lib / "librosidl_runtime_c.so", rmw_lib):
        if not needed.is_file():
            raise RosbridgeServerError(f"ROS 2 wheels not found ({needed} is missing): {ROS_WHEELS_HINT}")
    if not (prefix / "share" / "ament_index" / "resource_index" / "packages").is_dir():
        raise RosbridgeServerError(f"no ament index under {prefix}/share: {ROS_WHEELS_HINT}")
    if not any(importlib.metadata.distributions(name=f"ros-{distro}-rclpy", path=[str(site)])):
        raise RosbridgeServerError(f"the ROS wheels under {prefix} are not {distro} (no ros-{distro}-rclpy); "
                                   f"the {distro} server binary needs {distro} libraries")
    rmw_dir = cache_dir() / rmw
    _symlink(rmw_dir / "librmw_implementation.so", rmw_lib)
    vendored = sorted(str(p) for p in site.glob("*.libs") if p.is_dir())
    return {
        "ROS_DISTRO": distro,
        "AMENT_PREFIX_PATH": str(prefix),
        "LD_LIBRARY_PATH": os.pathsep.join([str(rmw_dir), str(lib), *vendored]),
        "LD_PRELOAD": str(libpython()),
    }


# --------------------------------------------------------------------------------------- the server

def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the usual bind-to-0 race applies)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


_LIVE: set[RosbridgeServer] = set()        # running servers, stopped at interpreter exit


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop(grace=2.0)


class RosbridgeServer:
    """A rosbridge-server-rs subprocess, in its own process group, logging to ``log_path``.

    ``port=0`` picks a free port at the first start; restarts keep the port, so clients that
    reconnect find the new server. ``domain_id`` sets ROS_DOMAIN_ID (else it is inherited), ``env``
    adds variables, ``extra_args`` are appended to the command line (see ``--help`` of the binary).
    """

    def __init__(self, port: int = 9090, host: str = "127.0.0.1", distro: str = "jazzy",
                 extra_args: Sequence[str] = (), *, domain_id: int | None = None,
                 env: Mapping[str, str] | None = None, log_path: str | os.PathLike | None = None,
                 startup_timeout: float = 20.0, venv_prefix: str | os.PathLike = sys.prefix):
        self.host = host
        self.port = int(port)
        self.distro = distro
        self.extra_args = tuple(extra_args)
        self.domain_id = domain_id
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.venv_prefix = venv_prefix
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self.returncode: int | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None

    # ------------------------------------------------------------------ state
    @property
    def url(self) -> str:
        host = _connect_host(self.host)
        return f"ws://[{host}]:{self.port}" if ":" in host else f"ws://{host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        bind = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return [str(server_binary(self.distro)), "--bind", bind, "--no-rosapi",
                "--log-ansi", "false", *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = {**os.environ, **rosbridge_server_env(self.venv_prefix, distro=self.distro), **self.extra_env}
        if self.domain_id is not None:
            env["ROS_DOMAIN_ID"] = str(self.domain_id)
        return env

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> RosbridgeServer:
        """Launch the server and wait until its port accepts connections."""
        if self.alive:
            return self
        env = self.environment()            # raises the one-line setup errors first
        cmd = self.command()
        connect_host = _connect_host(self.host)
        if self.port == 0:
            self.port = free_port(self.host or "127.0.0.1")
            cmd = self.command()
        elif _accepts(connect_host, self.port):
            raise RosbridgeServerError(f"port {self.host}:{self.port} is already in use; stop that server "
                                       "or pick another port (port=0 picks a free one)")
        if self.log_path is None:
            logs = cache_dir() / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"rosbridge-{self.port}-", suffix=".log", dir=logs)
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab", buffering=0)
        self._log.write(f"### {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        self.returncode = None
        self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise RosbridgeServerError(f"rosbridge server exited with code {code} at start "
                                           f"(log {self.log_path}): {_tail(self.log_path)}")
            if _accepts(connect_host, self.port):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RosbridgeServerError(f"rosbridge server did not open {self.host}:{self.port} within "
                                           f"{self.startup_timeout:.0f} s (log {self.log_path}): "
                                           f"{_tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; returns the exit code."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self._signal(proc, signal.SIGKILL)
                    proc.wait()
            self.returncode = proc.returncode
            _LIVE.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.returncode

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)        # start_new_session: the group id is the server's pid
        except ProcessLookupError:
            pass

    def restart(self) -> RosbridgeServer:
        self.stop()
        return self.start()

    def __enter__(self) -> RosbridgeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RosbridgeServer({self.url}, alive={self.alive}, log={self.log_path})"


# --------------------------------------------------------------------------------------- CLI

def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m envs.robot.rosbridge_server",
        description="Run a rosbridge websocket server on this venv's ROS 2 wheels, in the foreground "
                    "until Ctrl-C. Arguments it does not know go to the server binary "
                    "(e.g. --max-message-size N; see --server-help).")
    parser.add_argument("--port", type=int, default=9090, help="0 picks a free port (default 9090)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--distro", default="jazzy", choices=SUPPORTED_DISTROS)
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: inherited)")
    parser.add_argument("--print-env", action="store_true",
                        help="print the environment as shell exports and the command, and exit")
    parser.add_argument("--server-help", action="store_true", help="print the server binary's --help")
    args, extra = parser.parse_known_args(argv)
    server = RosbridgeServer(args.port, args.host, args.distro, extra, domain_id=args.domain_id)
    try:
        if args.print_env or args.server_help:
            env = server.environment()
            if args.server_help:
                return subprocess.call([str(server_binary(args.distro)), "--help"], env=env)
            for key, value in rosbridge_server_env(distro=args.distro).items():
                print(f"export {key}={value}")
            print(" ".join(server.command()))
            return 0
        signal.signal(signal.SIGTERM, _interrupt)
        server.start()
    except RosbridgeServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"rosbridge server on {server.url} (pid {server.pid}, ROS_DOMAIN_ID="
          f"{server.environment().get('ROS_DOMAIN_ID', '0')}); log {server.log_path}; Ctrl-C stops it",
          flush=True)
    try:
        with open(server.log_path, "rb") as log:        # follow the log until the server ends
            while server.alive:
                chunk = log.read()
                if chunk:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
            sys.stdout.buffer.write(log.read())
        code = server.stop()
        print(f"rosbridge server exited with code {code}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        server.stop()
        return 0


if __name__ == "__main__":
    sys.exit(main())
