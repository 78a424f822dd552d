"""Policy rollouts in vectorized environments: success rates, videos, reports.

Protocol (pinned and written into every report): episode k resets its env with seed
``seed + k``; M environments run in subprocesses (gymnasium ``AsyncVectorEnv``) and one
batched policy call serves all of them; an environment that finishes is reset with the
next unclaimed episode's seed, so the scenes do not depend on M. The policy's noise is drawn
from the envs' (episode seed, step) (vla/seeding.py): a rerun with the same M samples the same
chunks and gives the same results (a batch's noise is one draw, so another M draws other noise).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from envs.registry import episode_task, make_env  # the worlds: vla names no simulator itself
from vla.config import EnvConfig, RunConfig
from vla.features import image_key

def make_vector_env(cfg: EnvConfig, n_envs: int) -> gym.vector.VectorEnv:
    fns = [partial(make_env, cfg) for _ in range(n_envs)]
    mode = gym.vector.AutoresetMode.DISABLED  # we reset finished envs ourselves, with pinned seeds
    if n_envs == 1:
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv(fns, shared_memory=False, autoreset_mode=mode, context="spawn")


def video_frame(obs: dict, i: int, cameras: list[str], caption: str | None = None) -> np.ndarray:
    """Camera views of env ``i`` side by side, (H, n_cam * W, 3) uint8; with a caption (what
    the policy says it is doing), a text band under the views."""
    frame = np.concatenate([np.asarray(obs[image_key(c)][i]) for c in cameras], axis=1)
    if caption is None:
        return frame
    from PIL import Image, ImageDraw

    band = Image.new("RGB", (frame.shape[1], CAPTION_HEIGHT), (0, 0, 0))
    ImageDraw.Draw(band).text((2, 1), caption, fill=(255, 255, 255))  # PIL's built-in bitmap font
    return np.concatenate([frame, np.asarray(band)], axis=0)


CAPTION_HEIGHT = 12


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """H.264 mp4 through PyAV (lerobot's video dependency)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    h, w = h - h % 2, w - w % 2  # yuv420p wants even sizes
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def rollout(runtime, env_cfg: EnvConfig, *, episodes: int, n_envs: int, seed: int, video_dir: Path | None = None,
            max_videos: int = 0, fps: int | None = None, progress: bool = True) -> list[dict]:
    """Run ``episodes`` episodes; returns one record per episode, ordered by episode index.
    Videos play in real time: at ``fps``, by default the env's own rate (its ``render_fps``;
    Meta-World steps at 80 Hz, the tabletop at 20)."""
    n_envs = max(1, min(n_envs, episodes))
    envs = make_vector_env(env_cfg, n_envs)
    fps = fps or int(envs.metadata.get("render_fps") or 20)
    records: list[dict] = []
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(n_envs)])
        runtime.reset(seeds=[seed + i for i in range(n_envs)])  # the policy's noise too: reruns reproduce
        episode_of = list(range(n_envs))           # which episode each env is running (-1 = idle)
        reached: list[dict[str, bool]] = [{} for _ in range(n_envs)]  # stages each episode has reached so far
        next_episode, steps = n_envs, [0] * n_envs
        frames: dict[int, list[np.ndarray]] = {i: [] for i in range(min(max_videos, n_envs))}
        bar = tqdm(total=episodes, desc="eval", unit="episode", disable=not progress)
        started = time.time()
        while any(e >= 0 for e in episode_of):
            actions = runtime.act(obs)
            captions = runtime.annotations()  # said while choosing these actions
            for i, ep in enumerate(episode_of):
                if ep in frames:
                    frames[ep].append(video_frame(obs, i, env_cfg.cameras, captions[i] if captions else None))
            obs, _, terminated, truncated, info = envs.step(actions)
            done_ids = []
            for i, ep in enumerate(episode_of):
                if ep < 0:
                    continue
                steps[i] += 1
                for name, flags in info.get("stages", {}).items():
                    if not name.startswith("_"):  # gymnasium's per-key "_name" masks
                        reached[i][name] = reached[i].get(name, False) or bool(flags[i])
                if terminated[i] or truncated[i]:
                    success = bool(info["is_success"][i])
                    records.append({"episode": ep, "seed": seed + ep, "success": success, "length": steps[i],
                                    "task": episode_task(env_cfg, info, i),
                                    **({"stages": reached[i]} if reached[i] else {})})
                    reached[i] = {}
                    if ep in frames and video_dir is not None:
                        frames[ep].append(video_frame(obs, i, env_cfg.cameras, captions[i] if captions else None))
                        tag = "success" if success else "failure"
                        write_video(video_dir / f"episode_{ep:03d}_{tag}.mp4", frames.pop(ep), fps)
                    done_ids.append(i)
                    bar.update(1)
                    bar.set_postfix(success=f"{np.mean([r['success'] for r in records]):.0%}")
            if done_ids:
                obs, next_episode = _reassign(envs, obs, done_ids, episode_of, steps, next_episode, episodes, seed,
                                              frames, max_videos)
                restarted = [i for i in done_ids if episode_of[i] >= 0]
                runtime.reset(restarted, seeds=[seed + episode_of[i] for i in restarted])
        bar.close()
        for r in records:
            r["wall_s"] = round(time.time() - started, 2)
    finally:
        envs.close()
    return sorted(records, key=lambda r: r["episode"])


def _reassign(envs, obs, done_ids, episode_of, steps, next_episode, episodes, seed, frames, max_videos):
    """Give finished envs the next episodes (resetting them) or mark them idle."""
    mask = np.zeros(len(episode_of), dtype=bool)
    seeds: list[int | None] = [None] * len(episode_of)
    for i in done_ids:
        if next_episode < episodes:
            episode_of[i], steps[i], seeds[i], mask[i] = next_episode, 0, seed + next_episode, True
            if next_episode < max_videos:
                frames[next_episode] = []
            next_episode += 1
        else:
            episode_of[i] = -1
    if mask.any():
        obs, _ = envs.reset(seed=seeds, options={"reset_mask": mask})
    return obs, next_episode


def evaluate_policy(policy, normalizer, run: RunConfig, *, episodes: int | None = None, output_dir: Path | None = None,
                    progress: bool = True) -> dict:
    """Roll out a vla policy under the run's eval protocol; writes videos and report.md / report.json."""
    from vla.runtime import RuntimePolicy

    runtime = RuntimePolicy.from_settings(policy, normalizer, run.eval, "eval")
    about = {"policy": policy.config.name, **policy.sampling_protocol()}
    return evaluate_runtime(runtime, about, run, episodes=episodes, output_dir=output_dir, progress=progress)


def evaluate_runtime(runtime, about: dict, run: RunConfig, *, episodes: int | None = None,
                     output_dir: Path | None = None, progress: bool = True) -> dict:
    """Roll out any runtime (vla's `RuntimePolicy`, or a LeRobot policy's `LeRobotRuntime`) under
    the run's eval protocol; ``about`` (what the policy is, how it samples) joins the pinned
    protocol in the report."""
    from vla.report import summarize, write_report

    ev = run.eval
    episodes = episodes or ev.episodes
    out = Path(output_dir or ev.output_dir or Path(run.output_dir) / "eval")
    records = rollout(runtime, run.env, episodes=episodes, n_envs=ev.n_envs, seed=ev.seed, video_dir=out / "videos",
                      max_videos=ev.max_videos, progress=progress)
    protocol = {
        "episodes": episodes, "n_envs": ev.n_envs,
        "seeds": f"{ev.seed} .. {ev.seed + episodes - 1} (episode k: seed + k)",
        "n_action_steps (replan every)": runtime.n_action_steps, "temporal_ensemble": ev.temporal_ensemble,
        "env": asdict(run.env), "checkpoint": ev.checkpoint, **about,
    }
    result = summarize(records, protocol)
    write_report(out, result)
    return result
