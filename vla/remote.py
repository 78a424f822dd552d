"""The robot side of a policy served elsewhere (`vla serve`): a torch-free client.

    with RemotePolicy("ws://gpu-box:8765") as policy:     # the server's metadata arrives first
        chunk = policy.predict_chunk(history, step)       # (horizon, action_dim) float32

It stands in for `vla.runtime.RuntimePolicy` in the deploy loop (`deploy.server=<url>`): the
same ``predict_chunk(history, step)`` on raw observations, the same ``horizon``,
``n_action_steps``, ``n_obs_steps``, widths, cameras and feature mapping, read from the server's
metadata. The server runs the very `RuntimePolicy` that `vla deploy` runs in-process, so the
chunks are the same; the loop's asynchronous inference, stale-action skipping and ensembling
are unchanged.

Wire format: one websocket, msgpack messages, numpy arrays as ``{"__ndarray__": [dtype, shape,
bytes]}``. The server speaks first (``{"op": "metadata", ...}``); then each request gets one
reply: ``{"op": "chunk", "history": [obs, ...], "step": k}`` (with real-time chunking also
``"prefix": {"actions": (n, D_a), "delay": d, "max_guidance": b, "method": m, "mask": k}``, and with
the episode's seed ``"seed": s``: the chunk's noise then comes from (s, k)) -> ``{"op":
"chunk", "actions": (H, D_a), "server_seconds": s}``; ``{"op": "reset"}`` -> ``{"op": "reset"}``; ``{"op":
"health"}`` -> ``{"op": "health", "ok": true, ...}``; a request the server cannot serve ->
``{"op": "error", "message": ...}``.

A lost connection, a reply later than ``timeout`` or a malformed one raise `PolicyServerError`
(a `RobotError`): the deploy loop holds the arm and ends the run with one line. This module
imports numpy, msgpack and websockets only (no torch, no policy code).
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import numpy as np

from vla.errors import RobotError
from vla.chunking import ChunkPrefix

PROTOCOL = 1


class PolicyServerError(RobotError):
    """The policy server is unreachable, too slow, or answered something unusable."""


# --- the wire format ---------------------------------------------------------------------------
def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        return {"__ndarray__": [array.dtype.str, list(array.shape), array.tobytes()]}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if "__ndarray__" in obj:
        dtype, shape, data = obj["__ndarray__"]
        # a writable array: torch warns on (and must not write through) a read-only buffer
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
    return obj


def pack(message: dict) -> bytes:
    return msgpack.packb(message, default=_encode, use_bin_type=True)


def unpack(data: bytes) -> dict:
    message = msgpack.unpackb(data, object_hook=_decode, raw=False)
    if not isinstance(message, dict) or "op" not in message:
        raise ValueError("not a message (a dict with an 'op')")
    return message


# --- the client --------------------------------------------------------------------------------
class RemotePolicy:
    """A policy served by `vla serve` at ``url``; see the module docstring."""

    def __init__(self, url: str, *, timeout: float = 10.0, n_action_steps: int | None = None):
        self.url, self.timeout = url, timeout
        self._ws = None
        self._n_action_steps = n_action_steps
        self.metadata: dict = {}
        self.round_trips: list[float] = []      # s per chunk request, client side
        self.server_seconds: list[float] = []   # s the server spent on each

    # the connection ----------------------------------------------------------------------------
    def connect(self) -> RemotePolicy:
        from websockets.sync.client import connect

        try:
            self._ws = connect(self.url, open_timeout=self.timeout, max_size=None, compression=None)
        except (OSError, TimeoutError, ValueError) as e:
            raise PolicyServerError(f"policy server {self.url}: cannot connect ({_reason(e)})") from None
        except Exception as e:  # websockets' handshake errors (InvalidURI, InvalidHandshake, ...)
            raise PolicyServerError(f"policy server {self.url}: cannot connect ({_reason(e)})") from None
        meta = self._receive("metadata")
        if meta.get("protocol") != PROTOCOL:
            self.close()
            raise PolicyServerError(f"policy server {self.url} speaks protocol {meta.get('protocol')}, "
                                    f"this client {PROTOCOL}: update one of them")
        self.metadata = meta
        return self

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            finally:
                self._ws = None

    def __enter__(self) -> RemotePolicy:
        return self.connect() if self._ws is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # what the deploy loop reads ------------------------------------------------------------------
    @property
    def horizon(self) -> int:
        return int(self.metadata["horizon"])

    @property
    def n_action_steps(self) -> int:
        return self._n_action_steps or int(self.metadata["n_action_steps"])

    @property
    def n_obs_steps(self) -> int:
        return int(self.metadata["n_obs_steps"])

    @property
    def state_dim(self) -> int:
        return int(self.metadata["state_dim"])

    @property
    def action_dim(self) -> int:
        return int(self.metadata["action_dim"])

    @property
    def cameras(self) -> list[str]:
        return list(self.metadata["cameras"])

    @property
    def camera_pad(self) -> list[bool]:
        return list(self.metadata["camera_pad"])

    @property
    def feature_map(self):
        from vla.data.mapping import observation_map

        return observation_map(self.metadata.get("trained_on"), self.metadata.get("embodiment"))

    def describe(self) -> dict:
        """What the deploy report says about the policy: the server's own account and address."""
        return {"server": self.url, "policy": self.metadata.get("policy"),
                "checkpoint": self.metadata.get("checkpoint"), "weights_sha256": self.metadata.get("weights_sha256"),
                **self.metadata.get("sampling", {})}

    def reset(self) -> None:
        self._request({"op": "reset"}, "reset")

    def health(self) -> dict:
        return self._request({"op": "health"}, "health")

    @property
    def follows_prefix(self) -> bool:
        """Whether the served policy can be given a chunk prefix (real-time chunking)."""
        return bool(self.metadata.get("follows_prefix", False))

    @property
    def committed_max_delay(self) -> int:
        """The served policy's (vla.runtime.RuntimePolicy.committed_max_delay); 0 from an older server."""
        return int(self.metadata.get("committed_max_delay", 0))

    def predict_chunk(self, history: list[dict], step: int, prefix: ChunkPrefix | None = None,
                      seed: int | None = None) -> np.ndarray:
        """Unbatched raw observations, oldest first -> (horizon, action_dim) actions; with a
        ``prefix``, sampled to agree with the plan being executed (vla/chunking.py); with the
        episode's ``seed``, sampled reproducibly (vla/seeding.py)."""
        started = time.perf_counter()
        message = {"op": "chunk", "history": [_plain(o) for o in history], "step": int(step)}
        if seed is not None:
            message["seed"] = int(seed)
        if prefix is not None:
            message["prefix"] = prefix.to_wire()
        reply = self._request(message, "chunk")
        actions = reply.get("actions")
        if not (isinstance(actions, np.ndarray) and actions.shape == (self.horizon, self.action_dim)
                and np.issubdtype(actions.dtype, np.floating) and np.isfinite(actions).all()):
            shape = getattr(actions, "shape", type(actions).__name__)
            raise PolicyServerError(f"policy server {self.url}: malformed chunk ({shape}, expected finite "
                                    f"({self.horizon}, {self.action_dim}) floats)")
        self.round_trips.append(time.perf_counter() - started)
        self.server_seconds.append(float(reply.get("server_seconds", 0.0)))
        return actions.astype(np.float32, copy=False)

    # the messages --------------------------------------------------------------------------------
    def _request(self, message: dict, op: str) -> dict:
        if self._ws is None:
            raise PolicyServerError(f"policy server {self.url}: not connected")
        try:
            self._ws.send(pack(message))
        except Exception as e:  # the connection is gone (closed, reset)
            raise PolicyServerError(f"policy server {self.url}: connection lost ({_reason(e)})") from None
        return self._receive(op)

    def _receive(self, op: str) -> dict:
        try:
            data = self._ws.recv(timeout=self.timeout)
        except TimeoutError:
            raise PolicyServerError(f"policy server {self.url}: no {op!r} reply within {self.timeout:g} s") from None
        except Exception as e:
            raise PolicyServerError(f"policy server {self.url}: connection lost ({_reason(e)})") from None
        try:
            reply = unpack(data) if isinstance(data, bytes) else None
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise PolicyServerError(f"policy server {self.url}: malformed reply ({_reason(e)})") from None
        if reply is None:
            raise PolicyServerError(f"policy server {self.url}: malformed reply (text, not msgpack)")
        if reply["op"] == "error":
            raise PolicyServerError(f"policy server {self.url}: {reply.get('message', 'error')}")
        if reply["op"] != op:
            raise PolicyServerError(f"policy server {self.url}: malformed reply ({reply['op']!r} to a {op!r} request)")
        return reply


def _plain(obs: dict) -> dict:
    """An observation as the wire carries it: arrays and strings."""
    return {k: v if isinstance(v, str) else np.asarray(v) for k, v in obs.items()}


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]
