"""Measure a scripted expert: success rate, episode length and simulation speed over seeds.

    python -m envs.check_experts --task stack --episodes 100
    python -m envs.check_experts --task lift --episodes 20 --cameras agentview wrist
    python -m envs.check_experts --family robosuite --task PickPlaceCan --episodes 100
    python -m envs.check_experts --family metaworld --task MT10 --episodes 50    # per task: 5 seeds each

Cameras are off by default: the experts read privileged state, so images only cost time.
"""

import argparse
import importlib
import time
from collections import defaultdict

import numpy as np

FAMILIES = {"tabletop": "envs.tabletop", "robosuite": "envs.robosuite_tasks", "metaworld": "envs.metaworld_tasks"}


def run_episode(env, expert, seed: int) -> tuple[bool, int, str | None]:
    """One expert episode from reset(seed); returns (success, number of steps, the task the env
    named in info["task_name"], if it runs several)."""
    obs, info = env.reset(seed=seed)
    expert.reset()
    steps, success = 0, False
    while True:
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        steps += 1
        success = success or info["is_success"]
        if terminated or truncated:
            return success, steps, info.get("task_name")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="tabletop")
    parser.add_argument("--task", required=True, help="tabletop: lift | stack | place; robosuite: Lift | Stack | "
                        "PickPlaceCan; metaworld: any task (reach-v3), MT10, MT25, MT50")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--cameras", nargs="*", default=[], help="e.g. agentview wrist (default: none)")
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args(argv)

    family = importlib.import_module(FAMILIES[args.family])
    experts = importlib.import_module(FAMILIES[args.family] + ".experts")
    env = family.make_env(args.task, cameras=tuple(args.cameras), image_size=args.image_size, render_mode=None)
    expert = experts.make_expert(args.task, env)
    results, failed_seeds, per_task = [], [], defaultdict(list)
    start = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.episodes):
        success, steps, task = run_episode(env, expert, seed)
        results.append((success, steps))
        per_task[task or args.task].append((success, steps, seed))
        if not success:
            failed_seeds.append(seed)
    elapsed = time.perf_counter() - start
    env.close()

    successes = np.array([s for s, _ in results])
    lengths = np.array([n for _, n in results])
    print(f"family={args.family} task={args.task} episodes={args.episodes} cameras={list(args.cameras)}")
    print(f"success rate: {successes.mean():.3f}")
    if successes.any():
        ok = lengths[successes]
        print(f"successful episode length: mean {ok.mean():.1f}, min {ok.min()}, max {ok.max()}")
    print(f"steps/s (incl. resets and expert): {lengths.sum() / elapsed:.1f}")
    print(f"failed seeds: {failed_seeds}")
    if len(per_task) > 1:  # a task set: each task's own line
        for task, runs in per_task.items():
            ok = [n for s, n, _ in runs if s]
            print(f"  {task}: {len(ok)}/{len(runs)}, mean length {np.mean(ok) if ok else float('nan'):.1f}, "
                  f"failed seeds {[seed for s, _, seed in runs if not s]}")


if __name__ == "__main__":
    main()
