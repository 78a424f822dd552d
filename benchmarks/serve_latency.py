"""What serving a policy over a websocket adds to a chunk, on loopback.

    python -m benchmarks.serve_latency --checkpoint outputs/demo/run

Three candidates, interleaved, on the same two-camera 96x96 observation:
- ``in-process``: `RuntimePolicy.predict_chunk` (what `vla deploy` runs without a server);
- ``served``: `RemotePolicy.predict_chunk` against `vla serve` in another process (what
  `vla deploy deploy.server=...` runs), end to end;
- ``transport only``: the same request to a server whose runtime returns zeros at once: the
  websocket, msgpack and the copies alone (issue 21 asks <= 2 ms median).
The served row also reports the server's own share of each request (``server_seconds``), so
round trip minus that is what the network path added around the real policy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np

from benchmarks.common import REPO, interleaved_blocks, machine, markdown_table, median, set_threads, spread, \
    write_section


class _Zeros:
    """A runtime that answers at once: the transport's cost alone."""

    def __init__(self, horizon: int, action_dim: int):
        self.shape = (horizon, action_dim)

    def predict_chunk(self, history, step, prefix=None, seed=None):
        return np.zeros(self.shape, np.float32)


def observation() -> dict:
    rng = np.random.default_rng(0)
    return {"observation.images.agentview": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=11).astype(np.float32), "task": "lift the red cube"}


def start_server(checkpoint: str, threads: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "vla.cli", "serve", f"serve.checkpoint={checkpoint}",
                             "serve.host=127.0.0.1", "serve.port=0", f"serve.threads={threads}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("vla serve exited before it was up")
        if line.startswith("serving"):
            return proc, line.split(" at ")[-1].strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=20, help="timed chunks per block")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, in this process and the server's")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    set_threads(args.threads)
    from vla.checkpoint import load_policy
    from vla.remote import RemotePolicy
    from vla.runtime import RuntimePolicy
    from vla.serve import PolicyServer

    runtime = RuntimePolicy(*load_policy(args.checkpoint))
    history = [observation()] * runtime.n_obs_steps
    proc, url = start_server(args.checkpoint, args.threads)
    zeros = PolicyServer(_Zeros(runtime.horizon, runtime.action_dim),
                         {"horizon": runtime.horizon, "n_action_steps": runtime.n_action_steps,
                          "n_obs_steps": runtime.n_obs_steps, "action_dim": runtime.action_dim})
    zeros_url = f"ws://127.0.0.1:{zeros.start('127.0.0.1', 0)}"
    try:
        with RemotePolicy(url) as served, RemotePolicy(zeros_url) as echo:
            def calls(fn):
                def forever():  # (iter(fn, None) would compare each chunk with None)
                    while True:
                        yield fn(history, 0)
                return forever
            cands = {"in-process (RuntimePolicy.predict_chunk)": (calls(runtime.predict_chunk), args.requests),
                     "served (vla serve + RemotePolicy)": (calls(served.predict_chunk), args.requests),
                     "transport only (a server answering zeros)": (calls(echo.predict_chunk), args.requests)}
            times = interleaved_blocks(cands, rounds=args.rounds, warm=2, unit="ms")
            server_ms = [s * 1e3 for s in served.server_seconds]
    finally:
        proc.kill()
        zeros.stop()
    names = list(times)
    med = {k: median(v) * 1e3 for k, v in times.items()}
    rows = [[k, f"{med[k]:.2f}", spread([x * 1e3 for x in v], ".2f")] for k, v in times.items()]
    text = (f"## Policy server round trip ({args.threads} thread(s))\n\n{machine()}. Checkpoint `{args.checkpoint}`, "
            f"one two-camera 96x96 observation, {args.rounds} interleaved blocks of {args.requests} chunks; "
            f"`python -m benchmarks.serve_latency --checkpoint {args.checkpoint} --threads {args.threads}`.\n\n"
            + markdown_table(["chunk (loopback)", "ms median", "IQR ms"], rows)
            + f"\n\n- served minus in-process: {med[names[1]] - med[names[0]]:+.2f} ms per chunk end to end (the "
            f"server's own share of a served chunk: {median(server_ms):.2f} ms median; the two run in different "
            f"processes, so a difference inside the IQRs is noise); the transport alone takes "
            f"{med[names[2]]:.2f} ms (issue 21: <= 2 ms)\n")
    print("\n" + text)
    if not args.no_write:
        write_section(f"serve-latency-{args.threads}t", text)


if __name__ == "__main__":
    main()
