"""Env steps per second for 1 vs N vectorized envs, with and without cameras, vs LeRobot.

    python -m benchmarks.env_throughput                       # every row below
    python -m benchmarks.env_throughput --n-envs 1 2 --steps 100

Rows: the tabletop lift task and robosuite's Lift (two 96x96 cameras vs none), and
gym-pusht at 96x96 through vla's `env=gym` adapter next to the same env built by LeRobot's
own `lerobot.envs.factory.make_env` (its eval path). Every candidate steps random actions in
the vector env `vla eval` uses (``vla.rollout.make_vector_env``: AsyncVectorEnv in
subprocesses for N > 1); an env that finishes is reset, as in an eval. Reported: env steps per
second summed over the N envs (median of interleaved rounds) and the speed-up of N envs over
one. On a 2-core machine N > 2 cannot scale further; the rows show where it stops.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import REPO, machine, markdown_table, median, spread, write_section


def vla_vector_env(overrides: list[str], n_envs: int):
    from vla.cli import compose
    from vla.rollout import make_vector_env

    run, _ = compose(overrides)
    return make_vector_env(run.env, n_envs)


def lerobot_pusht_vector_env(n_envs: int, size: int):
    import multiprocessing

    from lerobot.envs.configs import PushtEnv
    from lerobot.envs.factory import make_env

    # LeRobot starts its workers with forkserver and imports gym_pusht only in the parent, so a
    # worker cannot find the env id; preloading the package in the server is the fix.
    multiprocessing.set_forkserver_preload(["gym_pusht"])
    cfg = PushtEnv(observation_height=size, observation_width=size)
    suites = make_env(cfg, n_envs=n_envs, use_async_envs=n_envs > 1)
    return next(iter(next(iter(suites.values())).values()))


class Stepper:
    """Steps a vector env with random actions; resets finished envs (for autoreset-free envs)."""

    def __init__(self, envs, seed: int = 0):
        self.envs = envs
        self.rng = np.random.default_rng(seed)
        self.envs.reset(seed=[seed + i for i in range(envs.num_envs)])
        self.manual_reset = envs.metadata.get("autoreset_mode") is not None and \
            getattr(envs.metadata.get("autoreset_mode"), "name", "") == "DISABLED"
        self.next_seed = seed + envs.num_envs

    def __call__(self, steps: int) -> None:
        space = self.envs.action_space
        for _ in range(steps):
            actions = self.rng.uniform(space.low, space.high).astype(space.dtype)
            _, _, terminated, truncated, _ = self.envs.step(actions)
            done = np.logical_or(terminated, truncated)
            if self.manual_reset and done.any():
                seeds = [self.next_seed + i if d else None for i, d in enumerate(done)]
                self.next_seed += int(done.sum())
                self.envs.reset(seed=seeds, options={"reset_mask": done})


CANDIDATES = {
    # name -> (family label, cameras?, builder(n_envs))
    "tabletop lift, 2 cameras": lambda n: vla_vector_env(["env=lift"], n),
    "tabletop lift, no cameras": lambda n: vla_vector_env(["env=lift", "env.cameras=[]"], n),
    "robosuite Lift, 2 cameras": lambda n: vla_vector_env(["env=robosuite-lift"], n),
    "robosuite Lift, no cameras": lambda n: vla_vector_env(["env=robosuite-lift", "env.cameras=[]"], n),
    "gym-pusht 96 px, vla env=gym": lambda n: vla_vector_env(["env=pusht"], n),
    "gym-pusht 96 px, LeRobot make_env": lambda n: lerobot_pusht_vector_env(n, 96),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=60, help="vector steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="substrings of candidate names to run")
    args = parser.parse_args(argv)
    names = [k for k in CANDIDATES if not args.only or any(s in k for s in args.only)]
    header = machine()
    print(header)

    results: dict[str, dict[int, list[float]]] = {name: {} for name in names}
    for n in args.n_envs:
        steppers = {}
        try:
            for name in names:
                steppers[name] = Stepper(CANDIDATES[name](n))
                steppers[name](5)  # warm-up: first renders, JIT, worker start-up
            for r in range(args.rounds):  # interleaved rounds: background load hits every candidate alike
                for name, step in steppers.items():
                    t0 = time.perf_counter()
                    step(args.steps)
                    rate = args.steps * n / (time.perf_counter() - t0)
                    results[name].setdefault(n, []).append(rate)
                print(f"  n_envs={n} round {r + 1}/{args.rounds}: " +
                      ", ".join(f"{k} {v[n][-1]:.0f}/s" for k, v in results.items()), flush=True)
        finally:
            for s in steppers.values():
                s.envs.close()

    rows = []
    for name in names:
        base = median(results[name][args.n_envs[0]])
        for n in args.n_envs:
            rates = results[name][n]
            rows.append([name, n, f"{median(rates):.0f}", spread(rates, ".0f"), f"{median(rates) / base:.2f}x"])
    table = markdown_table(["env", "n_envs", "env steps/s", "IQR", f"vs {args.n_envs[0]} env"], rows)
    ratios = []
    for n in args.n_envs:
        ours, theirs = "gym-pusht 96 px, vla env=gym", "gym-pusht 96 px, LeRobot make_env"
        if ours in results and theirs in results:
            ratios.append(f"- gym-pusht, {n} env(s): vla / LeRobot = "
                          f"{median(results[ours][n]) / median(results[theirs][n]):.2f}")
    body = (f"## Env throughput (`python -m benchmarks.env_throughput`)\n\nMachine: {header}. "
            f"{args.steps} vector steps per round, {args.rounds} interleaved rounds, random actions, "
            f"finished envs reset.\n\n{table}\n\n" + "\n".join(ratios))
    print(body)
    write_section("env-throughput", body)
    out = REPO / "outputs" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "env_throughput.json").write_text(json.dumps({k: {str(n): v for n, v in d.items()}
                                                         for k, d in results.items()}, indent=1))


if __name__ == "__main__":
    main()
