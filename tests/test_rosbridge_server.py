"""The rosbridge server on the venv's ROS 2 wheels, end to end with real components:

roslibpy (websocket client) <-> rosbridge-server-rs <-> DDS <-> an rclpy node in this process.

Each test runs in its own ROS_DOMAIN_ID (set in the environment before rclpy.init; the server
inherits it) on topics named uniquely per run, so other ROS processes on the machine do not interfere.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from tests.conftest import child_hears_ctrl_c

from envs.robot.rosbridge_server import (RosbridgeServer, RosbridgeServerError, free_port, libpython,
                                         rosbridge_server_env)

pytestmark = pytest.mark.timeout(120)

rclpy = pytest.importorskip("rclpy")
roslibpy = pytest.importorskip("roslibpy")
pytest.importorskip("rosbridge_server_rs")

RUN = uuid.uuid4().hex[:8]


def wait_for(predicate, timeout: float, every: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


@pytest.fixture(scope="module")
def domain_id():
    """A ROS domain of our own (1..101 are valid for every rmw), in the environment for rclpy and the server."""
    domain = 1 + (os.getpid() + int(RUN, 16)) % 101
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_DOMAIN_ID", str(domain))
        yield domain


@pytest.fixture(scope="module")
def node(domain_id):
    """An rclpy node in its own context, spinning in a thread."""
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    context = Context()
    rclpy.init(context=context)                       # reads ROS_DOMAIN_ID from the environment
    assert context.get_domain_id() == domain_id
    node = rclpy.create_node(f"test_rosbridge_{RUN}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node
    executor.shutdown()
    thread.join(5)
    node.destroy_node()
    rclpy.shutdown(context=context)


@pytest.fixture(scope="module")
def server(domain_id, tmp_path_factory):
    with RosbridgeServer(port=0, log_path=tmp_path_factory.mktemp("rosbridge") / "server.log") as server:
        yield server


clients: list = []


def connect(port: int, timeout: float = 10.0):
    ros = roslibpy.Ros("127.0.0.1", port)
    ros.run(timeout=timeout)
    clients.append(ros)
    return ros


@pytest.fixture(autouse=True)
def close_clients():
    yield
    while clients:
        ros = clients.pop()
        ros.factory.stopTrying()                       # no reconnection attempts after the test
        if ros.is_connected:
            ros.close()
    # Never ros.terminate(): it stops twisted's reactor, which cannot be restarted in this process.


def joint_state(i: int, stamp_sec: int = 0):
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.header.frame_id = f"base_{i}"
    msg.header.stamp.sec = stamp_sec
    msg.header.stamp.nanosec = 1000 + i
    msg.name = [f"panda_joint{k}" for k in range(1, 8)]
    msg.position = [0.1 * k + i for k in range(7)]
    msg.velocity = [-0.5 * k for k in range(7)]
    msg.effort = [float(i)] * 7
    return msg


def publish_until(publish, received, timeout: float = 10.0, every: float = 0.05) -> bool:
    """Publish repeatedly until something arrives: DDS discovery between the bridge and the node
    takes a moment, and messages published before it completes are dropped by design."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publish()
        if wait_for(lambda: len(received) > 0, every):
            return True
    return False


# ------------------------------------------------------------------------------------------- setup

def test_environment_is_a_sourced_jazzy():
    env = rosbridge_server_env()
    assert env["ROS_DISTRO"] == "jazzy"
    assert env["AMENT_PREFIX_PATH"] == str(os.path.realpath(sys.prefix))
    dirs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    rmw = os.path.join(dirs[0], "librmw_implementation.so")
    assert os.path.realpath(rmw) == os.path.realpath(os.path.join(sys.prefix, "lib", "librmw_fastrtps_cpp.so"))
    assert dirs[1] == os.path.join(os.path.realpath(sys.prefix), "lib")
    assert any(d.endswith("ros_rcl.libs") for d in dirs[2:]) and all(d.endswith(".libs") for d in dirs[2:])
    assert env["LD_PRELOAD"] == str(libpython()) and os.path.basename(env["LD_PRELOAD"]).startswith("libpython3")
    assert rosbridge_server_env() == env                   # idempotent: same link, no error on rerun


def test_clear_errors(tmp_path):
    with pytest.raises(RosbridgeServerError, match="ROS 2 wheels not found"):
        rosbridge_server_env(tmp_path)
    with pytest.raises(RosbridgeServerError, match="supports ROS_DISTRO"):
        RosbridgeServer(port=0, distro="rolling").start()
    with pytest.raises(RosbridgeServerError, match="not humble"):    # the venv's wheels are jazzy
        RosbridgeServer(port=0, distro="humble").start()
    # a server that dies at start: the error carries the log's last lines (clap's complaint)
    bad = RosbridgeServer(port=0, extra_args=["--no-such-flag"], log_path=tmp_path / "bad.log")
    with pytest.raises(RosbridgeServerError, match=r"exited with code 2 at start.*no-such-flag"):
        bad.start()
    assert not bad.alive
    # a port someone already listens on
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(RosbridgeServerError, match="already in use"):
            RosbridgeServer(port=s.getsockname()[1], log_path=tmp_path / "busy.log").start()


# ------------------------------------------------------------------------------------------- traffic

def test_rclpy_to_roslibpy_joint_state(server, node):
    from sensor_msgs.msg import JointState

    assert server.alive and server.url == f"ws://127.0.0.1:{server.port}"
    topic = f"/test_{RUN}/joint_states"
    pub = node.create_publisher(JointState, topic, 10)
    ros = connect(server.port)
    assert ros.is_connected
    received = []
    # the server takes both type spellings; use the ROS 2 one
    roslibpy.Topic(ros, topic, "sensor_msgs/msg/JointState").subscribe(received.append)
    assert publish_until(lambda: pub.publish(joint_state(0, 7)), received), "no JointState through the bridge"
    received.clear()
    for i in range(1, 6):
        pub.publish(joint_state(i, 7))
    assert wait_for(lambda: len(received) >= 5, 5.0), f"{len(received)}/5 JointStates arrived"
    for i, msg in enumerate(received[:5], start=1):
        assert msg["header"] == {"stamp": {"sec": 7, "nanosec": 1000 + i}, "frame_id": f"base_{i}"}
        assert msg["name"] == [f"panda_joint{k}" for k in range(1, 8)]
        np.testing.assert_allclose(msg["position"], [0.1 * k + i for k in range(7)])
        np.testing.assert_allclose(msg["velocity"], [-0.5 * k for k in range(7)])
        np.testing.assert_allclose(msg["effort"], [float(i)] * 7)
    node.destroy_publisher(pub)


def test_roslibpy_to_rclpy_joint_state(server, node):
    from sensor_msgs.msg import JointState

    topic = f"/test_{RUN}/joint_command"
    received = []
    sub = node.create_subscription(JointState, topic, received.append, 10)
    ros = connect(server.port)
    # the ROS 1 spelling is accepted too
    cmd = roslibpy.Topic(ros, topic, "sensor_msgs/JointState")

    def send(i):
        cmd.publish(roslibpy.Message({"header": {"stamp": {"sec": 3, "nanosec": i}, "frame_id": f"cmd_{i}"},
                                      "name": ["a", "b"], "position": [float(i), -1.5], "velocity": [],
                                      "effort": []}))

    assert publish_until(lambda: send(0), received), "no JointState from roslibpy reached rclpy"
    received.clear()
    for i in range(1, 6):
        send(i)
    assert wait_for(lambda: len(received) >= 5, 5.0), f"{len(received)}/5 commands arrived"
    assert [m.header.frame_id for m in received[:5]] == [f"cmd_{i}" for i in range(1, 6)]
    for i, msg in enumerate(received[:5], start=1):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (3, i)
        assert list(msg.name) == ["a", "b"]
        np.testing.assert_allclose(msg.position, [float(i), -1.5])
    node.destroy_subscription(sub)


def test_image_96x96_rgb8_both_ways(server, node):
    """Camera frames at policy size go through whole; uint8[] data travels as base64 in JSON."""
    from sensor_msgs.msg import Image

    frame = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    msg = Image(height=96, width=96, encoding="rgb8", step=96 * 3, data=frame.tobytes())
    msg.header.frame_id = "wrist"
    ros = connect(server.port)

    topic = f"/test_{RUN}/image"
    pub = node.create_publisher(Image, topic, 10)
    received = []
    roslibpy.Topic(ros, topic, "sensor_msgs/msg/Image").subscribe(received.append)
    assert publish_until(lambda: pub.publish(msg), received), "no Image through the bridge"
    got = received[-1]
    assert (got["height"], got["width"], got["encoding"], got["step"]) == (96, 96, "rgb8", 288)
    assert got["header"]["frame_id"] == "wrist"
    assert isinstance(got["data"], str)                       # base64
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(got["data"]), np.uint8).reshape(96, 96, 3), frame)

    back_topic = f"/test_{RUN}/image_back"
    back = []
    sub = node.create_subscription(Image, back_topic, back.append, 10)
    out = roslibpy.Topic(ros, back_topic, "sensor_msgs/msg/Image")
    payload = {"header": {"frame_id": "sent"}, "height": 96, "width": 96, "encoding": "rgb8", "step": 288,
               "data": base64.b64encode(frame.tobytes()).decode()}
    assert publish_until(lambda: out.publish(roslibpy.Message(payload)), back), "no Image from roslibpy"
    assert (back[-1].height, back[-1].width, back[-1].encoding) == (96, 96, "rgb8")
    np.testing.assert_array_equal(np.frombuffer(bytes(back[-1].data), np.uint8).reshape(96, 96, 3), frame)
    node.destroy_publisher(pub)
    node.destroy_subscription(sub)


# ------------------------------------------------------------------------------------------- lifecycle

def test_stop_is_noticed_and_restart_reconnects(domain_id, node, tmp_path):
    from sensor_msgs.msg import JointState

    topic = f"/test_{RUN}/restart"
    pub = node.create_publisher(JointState, topic, 10)
    timer = node.create_timer(0.05, lambda: pub.publish(joint_state(1)))
    server = RosbridgeServer(port=0, log_path=tmp_path / "server.log").start()
    try:
        port = server.port
        ros = connect(port)
        closed = threading.Event()
        ros.on("close", lambda _proto: closed.set())
        received = []
        roslibpy.Topic(ros, topic, "sensor_msgs/msg/JointState").subscribe(received.append)
        assert wait_for(lambda: len(received) > 0, 10.0), "no messages before the stop"

        t0 = time.monotonic()
        assert server.stop() == 0                             # SIGTERM: a clean exit
        assert not server.alive
        assert closed.wait(5.0), "roslibpy fired no 'close' after the server stopped"
        assert wait_for(lambda: not ros.is_connected, 5.0), "roslibpy still claims a connection"
        noticed = time.monotonic() - t0
        assert noticed < 5.0

        server.restart()
        assert server.alive and server.port == port           # same port, so clients can come back
        fresh = connect(port)
        assert fresh.is_connected
        # the old client reconnects by itself (twisted ReconnectingClientFactory, ~1 s first delay)
        # and its Topic re-subscribes
        assert wait_for(lambda: ros.is_connected, 15.0), "the old client did not reconnect"
        received.clear()
        assert wait_for(lambda: len(received) > 0, 10.0), "the old client's subscription did not resume"
        assert received[-1]["name"][0] == "panda_joint1"
    finally:
        node.destroy_timer(timer)
        node.destroy_publisher(pub)
        server.stop()


def test_stop_escalates_to_sigkill(domain_id, tmp_path):
    server = RosbridgeServer(port=0, log_path=tmp_path / "server.log").start()
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)                              # a server that cannot act on SIGTERM
    t0 = time.monotonic()
    assert server.stop(grace=0.5) == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - t0 < 5.0
    assert not server.alive and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cli_foreground_until_interrupt(domain_id, tmp_path):
    env = {**os.environ, "VLA_CACHE": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "envs.robot.rosbridge_server", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            preexec_fn=child_hears_ctrl_c)
    pid = None
    try:
        line = proc.stdout.readline()
        match = re.search(r"ws://127\.0\.0\.1:(\d+) \(pid (\d+), ROS_DOMAIN_ID=(\d+)\)", line)
        assert match, line
        port, pid, domain = map(int, match.groups())
        assert domain == domain_id
        ros = connect(port)
        assert ros.is_connected
        proc.send_signal(signal.SIGINT)                       # Ctrl-C
        assert proc.wait(10) == 0
        assert wait_for(lambda: not ros.is_connected, 5.0)
        with pytest.raises(ProcessLookupError):                # the server went with it
            os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pid is not None:  # the server runs in its own session: a killed CLI leaves it behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.stdout.close()


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
