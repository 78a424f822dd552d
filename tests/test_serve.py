"""`vla serve` and the torch-free client: the same chunks as in-process, faults that end a run in
one line with the arm holding and the data kept."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import once_deploy_is_stepping
from vla.cli import main
from vla.chunking import ChunkPrefix
from vla.remote import PolicyServerError, RemotePolicy, pack, unpack

ROOT = Path(__file__).resolve().parents[1]


def test_the_wire_carries_arrays_strings_and_nesting():
    message = {"op": "chunk", "step": 3, "history": [{"observation.state": np.arange(11, dtype=np.float32),
                                                    "observation.images.agentview": np.zeros((96, 96, 3), np.uint8),
                                                    "task": "lift the red cube"}]}
    back = unpack(pack(message))
    obs = back["history"][0]
    assert back["op"] == "chunk" and back["step"] == 3 and obs["task"] == "lift the red cube"
    np.testing.assert_array_equal(obs["observation.state"], message["history"][0]["observation.state"])
    image = obs["observation.images.agentview"]
    assert image.dtype == np.uint8 and image.shape == (96, 96, 3)
    with pytest.raises(ValueError, match="not a message"):
        unpack(pack({"no": "op"}))


@pytest.fixture(scope="module")
def served(trained_run):
    """The tiny checkpoint served in this process on a free port: (server, url, runtime)."""
    from vla.cli import compose
    from vla.serve import server_for

    run, _ = compose([f"serve.checkpoint={trained_run}", "serve.port=0"])
    server = server_for(run)
    port = server.start("127.0.0.1", 0)
    yield server, f"ws://127.0.0.1:{port}"
    server.stop()


def observation(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.images.agentview": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=11).astype(np.float32), "task": "lift the red cube"}


def test_a_served_chunk_is_the_in_process_chunk(served):
    import torch

    server, url = served
    with RemotePolicy(url) as remote:
        meta = remote.metadata
        assert meta["policy"] == "dita" and len(meta["weights_sha256"]) == 16
        assert (remote.horizon, remote.n_obs_steps, remote.state_dim, remote.action_dim) == (8, 2, 11, 7)
        assert remote.cameras == ["agentview", "wrist"] and remote.camera_pad == [False, False]
        assert remote.health()["ok"]
        remote.reset()
        torch.manual_seed(0)
        chunk = remote.predict_chunk([observation()], step=0)
        torch.manual_seed(0)
        local = server.runtime.predict_chunk([observation()], step=0)
        np.testing.assert_allclose(chunk, local, atol=1e-6)
        assert remote.round_trips[0] >= remote.server_seconds[0] > 0
        bad = observation()
        bad["observation.state"] = bad["observation.state"][:5]
        with pytest.raises(PolicyServerError, match=r"bad request: observation.state: expected \(B, 11\)"):
            remote.predict_chunk([bad], step=0)
        assert remote.predict_chunk([observation(1)], step=1).shape == (8, 7)  # the connection lives on
        # real-time chunking: the plan travels with the request and the server conditions on it
        assert remote.follows_prefix
        plan = ChunkPrefix(np.full((6, 7), 0.5, np.float32), delay=2, method="inpaint")
        torch.manual_seed(0)
        chunk = remote.predict_chunk([observation()], step=0, prefix=plan)
        torch.manual_seed(0)
        np.testing.assert_allclose(chunk, server.runtime.predict_chunk([observation()], 0, plan), atol=1e-6)
        assert not np.allclose(chunk, local, atol=1e-3)
        with pytest.raises(PolicyServerError, match="bad request: chunk prefix: 3 action values"):
            remote.predict_chunk([observation()], step=0, prefix=ChunkPrefix(np.zeros((6, 3)), delay=2))
        # the episode's seed travels too: the served chunk is the in-process one, with no global seeding
        seeded = remote.predict_chunk([observation()], step=3, seed=5)
        np.testing.assert_allclose(seeded, server.runtime.predict_chunk([observation()], 3, None, 5), atol=1e-6)
        assert not np.allclose(seeded, remote.predict_chunk([observation()], step=3, seed=6), atol=1e-3)


def test_a_slow_or_malformed_or_lost_server_is_one_line(served, monkeypatch):
    server, url = served
    with RemotePolicy(url, timeout=0.5) as remote:
        real = server.runtime.predict_chunk
        monkeypatch.setattr(server.runtime, "predict_chunk", lambda *a: (time.sleep(1.5), real(*a))[1])
        with pytest.raises(PolicyServerError, match=r"no 'chunk' reply within 0.5 s"):
            remote.predict_chunk([observation()], step=0)
    monkeypatch.setattr(server.runtime, "predict_chunk", lambda *a: np.full((8, 7), np.nan, np.float32))
    with RemotePolicy(url) as remote:
        with pytest.raises(PolicyServerError, match=r"malformed chunk \(\(8, 7\), expected finite \(8, 7\) floats\)"):
            remote.predict_chunk([observation()], step=0)
    monkeypatch.setattr(server.runtime, "predict_chunk", lambda *a: np.zeros((3, 7), np.float32))
    with RemotePolicy(url) as remote:
        with pytest.raises(PolicyServerError, match=r"malformed chunk \(\(3, 7\)"):
            remote.predict_chunk([observation()], step=0)
    with pytest.raises(PolicyServerError, match="cannot connect"):
        RemotePolicy("ws://127.0.0.1:9", timeout=2).connect()  # nothing listens on the discard port


# `vla deploy` in a fresh interpreter where importing torch, or a policy's modules other than its
# config, raises.
NO_TORCH_CLIENT = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        parts = name.split(".")
        if parts[0] == "torch" or (parts[0] == "policies" and len(parts) > 2 and parts[2] != "config"):
            raise ImportError("the robot side imported " + name)
sys.meta_path.insert(0, NoTorch())
from vla.cli import main
sys.exit(main(sys.argv[1:]))
"""


def serve_process(checkpoint) -> tuple[subprocess.Popen, str]:
    """`vla serve` as a user starts it, on a free port; (process, its url)."""
    proc = subprocess.Popen([sys.executable, "-m", "vla.cli", "serve", f"serve.checkpoint={checkpoint}",
                             "serve.host=127.0.0.1", "serve.port=0", "serve.threads=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    while not any("serving" in line for line in lines):
        line = proc.stdout.readline()
        assert line, "vla serve exited:\n" + "".join(lines)
        lines.append(line)
    return proc, lines[-1].split(" at ")[-1].strip()


def test_vla_serve_and_vla_deploy_from_the_command_line(trained_run, tmp_path, capsys):
    """What a user types: `vla serve` on the GPU box, `vla deploy deploy.server=...` by the arm; the
    server killed mid-run ends the run with one line, the arm holding, the steps so far recorded."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    proc, url = serve_process(trained_run)
    try:
        out = tmp_path / "deploy"
        assert main(["deploy", f"deploy.server={url}", f"deploy.output_dir={out}", "deploy.max_steps=8",
                     "deploy.stop_on_success=false"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 8 and summary["chunks"] >= 1 and summary["protocol"]["server"] == url
        assert summary["server"]["round_trip_ms"]["p50"] >= summary["server"]["server_ms"]["p50"] > 0
        assert "policy server ws://" in (out / "report.md").read_text()
        assert main(["deploy", f"deploy.server={url}", "deploy.inference_steps=2",
                     f"deploy.output_dir={tmp_path / 'refused'}"]) == 2
        assert "the server decides it (vla serve serve.inference_steps=...)" in capsys.readouterr().err

        # the robot side imports neither torch nor any policy's model code, real-time chunking included
        # (with deploy.record=true lerobot's dataset writer brings torch in, but no model)
        client = subprocess.run([sys.executable, "-c", NO_TORCH_CLIENT, "deploy", "robot=sim", f"deploy.server={url}",
                                 f"deploy.output_dir={tmp_path / 'robot-side'}", "deploy.max_steps=8",
                                 "deploy.record=false", "deploy.rtc=true", "deploy.rtc_method=inpaint",
                                 "deploy.stop_on_success=false"], capture_output=True, text=True, cwd=ROOT)
        assert client.returncode == 0, client.stdout + client.stderr
        summary = json.loads((tmp_path / "robot-side" / "summary.json").read_text())
        assert summary["steps"] == 8 and summary["protocol"]["rtc"] and summary["chunks"] >= 2

        killed = tmp_path / "killed"
        once_deploy_is_stepping(proc.kill)
        code = main(["deploy", f"deploy.server={url}", f"deploy.output_dir={killed}", "deploy.max_steps=100000",
                     "deploy.stop_on_success=false", "robot.safety.max_consecutive_limited=100000",
                     "deploy.server_timeout=2"])
        err = capsys.readouterr().err
        assert code == 3 and "policy server" in err and "the arm is holding" in err
        summary = json.loads((killed / "summary.json").read_text())
        assert summary["stopped"] == ["fault"] and summary["steps"] > 0
        assert LeRobotDataset("local/data", root=killed / "data").meta.total_frames == summary["steps"]
    finally:
        proc.kill()
        proc.wait()
    assert main(["deploy", f"deploy.server={url}", f"deploy.output_dir={tmp_path / 'gone'}"]) == 2
    assert "deploy.server: policy server" in capsys.readouterr().err and not (tmp_path / "gone").exists()
