"""``vla`` command line: collect | train | eval | twin | deploy | convert, configured by Hydra overrides.

    vla collect collect.episodes=100 env=lift dataset.root=data/lift
    vla train policy=dita-small dataset.root=data/lift output_dir=outputs/lift
    vla train --resume output_dir=outputs/lift
    vla eval eval.checkpoint=outputs/lift eval.episodes=50
    vla twin robot=twin                                    # the simulated Panda on ROS 2 topics
    vla deploy robot=twin deploy.checkpoint=outputs/lift   # a checkpoint driving a robot
    vla convert convert.input=demo.hdf5 dataset.root=data/rm   # robomimic / robosuite HDF5 -> LeRobot

Errors the user can fix (bad config, missing dataset, corrupt checkpoint, ...) print one
line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from vla.errors import USER_ERRORS, ConfigError, RobotError

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering, no display needed


_SLICED_KEY = re.compile(r"^[\w.]+\[[^\]]*\]$")


def quote_slices(override: str) -> str:
    """``dataset.features.action=action[0:7]`` -> ``dataset.features.action="action[0:7]"``: a
    feature source with a slice is a string to vla, where Hydra's grammar would read a list."""
    key, eq, value = override.partition("=")
    if eq and key.lstrip("+").startswith("dataset.features.") and _SLICED_KEY.match(value):
        return f'{key}="{value}"'
    return override


def compose(overrides: list[str]):
    """Hydra-compose ``configs/config.yaml`` with ``overrides`` -> (RunConfig, PolicyConfig)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vla.config import RunConfig, config_dir, open_mappings, parse_run_config
    from vla.policy_config import available_policies, policy_config_class

    mappings = open_mappings()

    def adds_to_mapping(override: str) -> bool:
        key, eq, _ = override.partition("=")
        return bool(eq) and not key.startswith(("+", "~")) and key.rpartition(".")[0] in mappings

    # a key added to a mapping (env.kwargs.<name>=...) sets or adds it, with or without a default
    overrides = [quote_slices(f"++{o}" if adds_to_mapping(o) else o) for o in overrides]

    store = ConfigStore.instance()
    store.store(name="vla_schema", node=RunConfig)
    for name in available_policies():  # config dataclasses only; models stay unimported
        store.store(group="policy", name=f"{name}_schema", node=policy_config_class(name))
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(str(e).split()).split(" Config search path")[0]
        cause = e.__cause__
        if msg.startswith("Error merging override") and isinstance(cause, OmegaConfBaseException):
            # omegaconf says why (the type expected): "Value 'abc' of type 'str' could not be converted to Integer"
            msg = f"{msg.removeprefix('Error merging override ')}: {str(cause).splitlines()[0]}"
        if msg.startswith("Could not override"):
            key = msg.split("'")[1]
            msg = f"unknown config key {key!r} (see every key with: vla <command> --print-config)"
        raise ConfigError(msg) from None
    return parse_run_config(cfg)


def collect_agent(env_cfg, c, env, device: str):
    """What ``collect.agent`` (of CollectConfig ``c``) names, acting in ``env``: the task's
    scripted expert (executing a wrong grasp / release / descent in the fractions
    ``c.grasp_mistakes`` / ``c.place_mistakes`` / ``c.align_mistakes`` of episodes), uniform
    random actions, or a checkpoint (path or hub id)."""
    from vla.data.collect import RandomAgent
    from envs.registry import make_expert

    if c.agent == "expert":
        return make_expert(env_cfg, env, mistakes=c.grasp_mistakes, place_mistakes=c.place_mistakes,
                           align_mistakes=c.align_mistakes)
    if c.agent == "random":
        return RandomAgent(env.action_space, seed=c.seed)
    from vla.checkpoint import load_policy
    from vla.runtime import PolicyAgent, RuntimePolicy

    policy, normalizer = load_policy(c.agent, device)
    return PolicyAgent(RuntimePolicy(policy, normalizer, embodiment=c.embodiment))


def collect_env_and_agent(env_cfg, c, device: str, threads: int | None = None):
    """A fresh (env, agent) pair: what each parallel collection worker runs."""
    from envs.registry import make_env

    if threads:
        import torch

        torch.set_num_threads(threads)  # workers share the cores; one torch pool each would oversubscribe
    env = make_env(env_cfg)
    return env, collect_agent(env_cfg, c, env, device)


def cmd_collect(run, policy_cfg, args) -> None:
    """Run the scripted expert (or a checkpoint) in an env and record a LeRobot dataset."""
    from functools import partial

    from vla.data.collect import check_action_noise, collect
    from vla.data.recorder import EpisodeRecorder, check_unlocked
    from envs.registry import make_env

    c = run.collect  # its ranges (episodes, n_envs, action_noise) were checked when composed (LIMITS)
    for key in ("grasp_mistakes", "place_mistakes", "align_mistakes"):
        p = getattr(c, key)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"collect.{key} must be a fraction of episodes in [0, 1], got {p}")
        if p and c.agent != "expert":
            raise ConfigError(f"collect.{key} needs collect.agent=expert (a scripted expert injects them), "
                              f"got collect.agent={c.agent!r}")
    if run.dataset.root:
        check_unlocked(run.dataset.root)
    env = make_env(run.env)
    try:  # before the recorder exists, so a bad setting writes nothing
        check_action_noise(env.action_space, c.action_noise, c.noise_dims)
    except ValueError as e:
        env.close()
        raise ConfigError(f"collect.{e}") from None
    device = str(_device(run))
    if c.n_envs == 1:
        agent, factory = collect_agent(run.env, c, env, device), None
    else:  # the agents live in the workers; here the env only describes the dataset's features
        threads = max(1, (os.cpu_count() or 1) // c.n_envs)
        agent, factory = None, partial(collect_env_and_agent, run.env, c, device, threads)
    with EpisodeRecorder.for_env(env, root=run.dataset.root, repo_id=run.dataset.repo_id) as recorder:
        stats = collect(env, agent, recorder, c.episodes, success_only=c.success_only, seed=c.seed,
                        max_attempts=c.max_attempts, action_noise=c.action_noise, noise_dims=c.noise_dims,
                        workers=c.n_envs, make_env_and_agent=factory)
    env.close()
    print(f"collected {stats.episodes_saved} episodes ({stats.frames} frames) into {run.dataset.root}; "
          f"agent success {stats.success_rate:.1%} over {stats.attempts} attempts in {stats.seconds:.0f} s")


def cmd_train(run, policy_cfg, args) -> None:
    """Train a policy on a LeRobot dataset (torchrun for several processes)."""
    from vla.train import train

    ckpt = train(run, policy_cfg, resume=args.resume)
    if ckpt is not None:
        print(f"checkpoint: {ckpt}\nloss curve: {os.path.join(run.output_dir, 'loss.png')}")


def cmd_eval(run, policy_cfg, args) -> None:
    """Roll out a checkpoint (vla's, or a LeRobot policy's) in vectorized envs; success rate, videos, report."""
    from vla.rollout import evaluate_policy, evaluate_runtime

    ckpt = run.eval.checkpoint or run.output_dir
    run.eval.checkpoint = ckpt
    out = run.eval.output_dir or os.path.join(run.output_dir, "eval")
    lerobot = _lerobot_runtime(ckpt, run)
    if lerobot is not None:
        r = evaluate_runtime(lerobot, lerobot.protocol(), run, output_dir=out)
    else:
        from vla.checkpoint import load_policy

        r = evaluate_policy(*load_policy(ckpt, _device(run)), run, output_dir=out)
    lo, hi = r["ci95"]
    print(f"success rate {r['success_rate']:.1%} ({r['successes']}/{r['episodes']}), 95% CI [{lo:.1%}, {hi:.1%}], "
          f"mean length {r['mean_length']:.1f}")
    if "stages_reached" in r:
        print("stages reached: " + ", ".join(f"{k} {v:.0%}" for k, v in r["stages_reached"].items()))
    print(f"report: {out}/report.md\nvideos: {out}/videos/")


def _lerobot_runtime(ckpt: str, run):
    """A LeRobot policy's runtime if ``ckpt`` is a LeRobot checkpoint, else None. The eval
    settings that reach into a vla policy have no LeRobot counterpart here: refused by name."""
    from vla.checkpoint import is_lerobot_checkpoint, resolve_model_dir

    model_dir = resolve_model_dir(ckpt)
    if not is_lerobot_checkpoint(model_dir):
        return None
    for key in ("n_action_steps", "inference_steps", "test_time_scaling", "temporal_ensemble"):
        if getattr(run.eval, key) is not None:
            raise ConfigError(f"eval.{key} applies to vla policies; a LeRobot checkpoint keeps its own "
                              f"(set it in its config.json)")
    from vla.lerobot_policy import load_lerobot_runtime

    return load_lerobot_runtime(str(model_dir), _device(run))


def cmd_twin(run, policy_cfg, args) -> None:
    """Serve the tabletop Panda as a franka_ros2-like ROS 2 node (until Ctrl-C)."""
    from envs.robot.twin import run_twin

    run_twin(run.robot)


def cmd_deploy(run, policy_cfg, args) -> None:
    """Run a checkpoint on a robot backend through the safety layer; records and reports."""
    from vla.deploy import deploy

    out = run.deploy.output_dir or os.path.join(run.output_dir, "deploy")
    summary = deploy(run)
    s = summary
    rate = "" if s["success_rate"] is None else f"success {s['success_rate']:.0%} ({s['successes']}/{s['episodes']}); "
    print(f"{rate}{s['steps']} steps; "
          f"period p50 {s['period_ms']['p50'] or 0:.1f} ms, p99 {s['period_ms']['p99'] or 0:.1f} ms; "
          f"safety changed {s['safety']['commands_changed']}/{s['safety']['commands_sent']} commands\n"
          f"report: {out}/report.md")
    if "interrupted" in s["stopped"]:
        print("stopped by Ctrl-C; the arm is holding", file=sys.stderr)
        raise KeyboardInterrupt
    if s["stopped"] and s["stopped"][-1] == "fault":  # the run ended on a fault
        raise RobotError(s["messages"][-1])


def cmd_serve(run, policy_cfg, args) -> None:
    """Serve a checkpoint over a websocket for `vla deploy deploy.server=ws://host:port` (until Ctrl-C)."""
    from vla.serve import serve

    serve(run)


def cmd_convert(run, policy_cfg, args) -> None:
    """Convert robomimic / robosuite HDF5 demos into a LeRobot dataset at dataset.root."""
    from envs.robosuite_tasks.convert import convert_hdf5

    if not run.dataset.root:
        raise ConfigError("dataset.root is required: the directory to write the converted dataset to")
    s = convert_hdf5(run.convert, root=run.dataset.root, repo_id=run.dataset.repo_id)
    images = "re-rendered from the states" if s.rendered else "from the file"
    cameras = f"cameras {', '.join(s.cameras)} at {run.convert.image_size} px {images}" if s.cameras else "no cameras"
    print(f"converted {s.episodes} episodes ({s.frames} frames) from {run.convert.input} into {s.root}; "
          f"{cameras}; {s.seconds:.0f} s")


def _device(run):
    from vla.distributed import pick_device

    return pick_device(run.device)


COMMANDS = {"collect": cmd_collect, "train": cmd_train, "eval": cmd_eval, "twin": cmd_twin, "deploy": cmd_deploy,
            "serve": cmd_serve, "convert": cmd_convert}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vla", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in COMMANDS.items():
        p = sub.add_parser(name, help=fn.__doc__)
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.steps=1000 policy=dita-base")
        p.add_argument("--print-config", action="store_true", help="print the composed config and exit")
        if name == "train":
            p.add_argument("--resume", action="store_true",
                           help="continue the run in output_dir from its last checkpoint")
    args = parser.parse_args(argv)
    try:
        run, policy_cfg = compose(args.overrides)
        if args.print_config:
            from dataclasses import asdict

            import yaml

            print(yaml.safe_dump({**asdict(run), "policy": asdict(policy_cfg) if policy_cfg else None},
                                 sort_keys=False))
            return 0
        COMMANDS[args.command](run, policy_cfg, args)
    except USER_ERRORS as e:
        print(f"vla {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RobotError as e:  # a fault on the robot side: the safety layer has left the arm holding
        print(f"vla {args.command}: robot: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"vla {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
