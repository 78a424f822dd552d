"""`vla serve`: a checkpoint served over a websocket, for a robot PC without a GPU.

    vla serve serve.checkpoint=outputs/lift/run serve.port=8765          # on the GPU box
    vla deploy robot=franka-ros2 deploy.server=ws://gpu-box:8765 ...     # by the arm (no torch)

The server holds one `RuntimePolicy`, the same one `vla deploy` runs in-process, and answers
the requests of `vla.remote.RemotePolicy` (the wire format is in that module's docstring): on
connecting, a client first receives the metadata (protocol, policy, checkpoint and a hash of its
weights, cameras, widths, horizon and chunking, the dataset mapping, the sampling settings);
then a chunk per request, each reply saying how long the server spent on it. One request
is served at a time (one policy); a second client waits for the first's request to finish.

Why a websocket and msgpack rather than gRPC: one round trip per chunk over one persistent
connection, no schema to compile, the client needs only `websockets` and `msgpack` (no torch,
no generated code), and openpi's deployments already use the same transport, so lab tooling
around it carries over.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import numpy as np

from vla.remote import PROTOCOL, pack, unpack
from vla.chunking import ChunkPrefix

logger = logging.getLogger(__name__)


class PolicyServer:
    """Answers `RemotePolicy` requests with ``runtime`` (a `RuntimePolicy`)."""

    def __init__(self, runtime, metadata: dict):
        self.runtime, self.metadata = runtime, {"op": "metadata", "protocol": PROTOCOL, **metadata}
        self._lock = threading.Lock()  # one policy: one inference at a time
        self.started, self.requests = time.monotonic(), 0
        self._server = None

    def handle(self, connection) -> None:
        """One client connection: metadata, then a reply per request until it closes."""
        from websockets.exceptions import ConnectionClosed

        try:
            connection.send(pack(self.metadata))
            for data in connection:
                connection.send(pack(self.reply(data)))
        except ConnectionClosed:
            pass

    def reply(self, data) -> dict:
        try:
            request = unpack(data) if isinstance(data, bytes) else None
        except Exception as e:  # not msgpack, not a message
            return {"op": "error", "message": f"malformed request ({str(e)[:120]})"}
        if request is None:
            return {"op": "error", "message": "malformed request (text, not msgpack)"}
        op = request["op"]
        if op == "health":
            return {"op": "health", "ok": True, "requests": self.requests,
                    "uptime_seconds": round(time.monotonic() - self.started, 1)}
        if op == "reset":
            return {"op": "reset"}  # the server keeps no per-episode state: chunks are stateless
        if op != "chunk":
            return {"op": "error", "message": f"unknown op {op!r}"}
        try:
            history, step = list(request["history"]), int(request["step"])
            seed = None if request.get("seed") is None else int(request["seed"])  # reproducible sampling
            prefix = ChunkPrefix.from_wire(request.get("prefix"))  # real-time chunking (vla/chunking.py)
            with self._lock:
                started = time.perf_counter()
                actions = self.runtime.predict_chunk(history, step, prefix, seed)
                seconds = time.perf_counter() - started
                self.requests += 1
        except (KeyError, TypeError, ValueError) as e:  # a bad observation: the runtime names the key
            return {"op": "error", "message": f"bad request: {str(e).splitlines()[0][:200]}"}
        return {"op": "chunk", "actions": np.asarray(actions, np.float32), "server_seconds": seconds}

    # running -------------------------------------------------------------------------------------
    def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0: any free port) in a background thread; returns the port."""
        from websockets.sync.server import serve

        self._server = serve(self.handle, host, port, max_size=None, compression=None)
        threading.Thread(target=self._server.serve_forever, name="vla-serve", daemon=True).start()
        return self._server.socket.getsockname()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def weights_hash(model_dir: Path) -> str:
    """The checkpoint's identity: sha256 of its weights file (first 16 hex digits)."""
    digest = hashlib.sha256()
    with open(model_dir / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def server_for(run) -> PolicyServer:
    """The server ``run.serve`` describes: its checkpoint loaded, its runtime built."""
    import torch

    from vla.checkpoint import load_policy, resolve_model_dir
    from vla.distributed import pick_device
    from vla.runtime import RuntimePolicy

    cfg = run.serve
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = cfg.checkpoint or run.output_dir
    policy, normalizer = load_policy(ckpt, pick_device(run.device))
    runtime = RuntimePolicy.from_settings(policy, normalizer, cfg, "serve")
    return PolicyServer(runtime, metadata_of(runtime, str(ckpt), weights_hash(resolve_model_dir(ckpt))))


def metadata_of(runtime, checkpoint: str, weights_sha256: str) -> dict:
    """What the server tells a client first: everything it checks the robot against."""
    policy = runtime.policy
    return {
        "policy": policy.config.name, "checkpoint": checkpoint, "weights_sha256": weights_sha256,
        "cameras": list(policy.config.backbone.cameras), "camera_pad": list(runtime.camera_pad),
        "state_dim": runtime.state_dim, "action_dim": runtime.action_dim, "n_obs_steps": runtime.n_obs_steps,
        "horizon": runtime.horizon, "n_action_steps": runtime.n_action_steps,
        "embodiment": None if runtime.embodiment is None else policy.config.embodiments[runtime.embodiment],
        "trained_on": policy.trained_on, "sampling": policy.sampling_protocol(), "device": str(runtime.device),
        "follows_prefix": runtime.follows_prefix,
        "committed_max_delay": runtime.committed_max_delay,
    }


def serve(run) -> None:
    """`vla serve`: listen until Ctrl-C."""
    server = server_for(run)
    port = server.start(run.serve.host, run.serve.port)
    print(f"serving {server.metadata['policy']} ({server.metadata['checkpoint']}, weights "
          f"{server.metadata['weights_sha256']}) at ws://{run.serve.host}:{port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()
