"""Typed run configuration: dataclasses are the schema, Hydra YAML in ``configs/`` composes them.

Every section is checked against its dataclass in struct mode, so a misspelt key is an
error naming the key instead of a silently ignored setting. The ``policy`` section is
checked against the config class of the policy it names (the registry resolves it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from envs.robot.config import RobotConfig
from vla.errors import ConfigError
from vla.policy_config import PolicyConfig, policy_config_class


@dataclass
class GymMapping:
    """How a gymnasium env's observations become the policy's features (``env.family=gym``).

    A *path* names a part of the env's observation: ``agent_pos`` (a key of a Dict
    observation; ``a/b`` for nested Dicts), ``[0:2]`` (a slice of a Box observation), or
    ``agent_pos[0:2]`` (both); ``render`` (for an image) calls ``env.render()``.
    """

    state: list[str] = field(default_factory=list)   # paths concatenated into observation.state
    images: dict[str, str] = field(default_factory=dict)  # camera name (env.cameras) -> image path
    env_state: list[str] = field(default_factory=list)    # paths concatenated into observation.environment_state
    success: str = "is_success"       # the info key that says an episode succeeded
    success_reward: float | None = None  # or: success when a step's reward reaches this (envs without that key)


@dataclass
class EnvConfig:
    family: str = "tabletop"          # tabletop | robosuite | robocasa | gym
    task: str = "lift"                # tabletop: lift | stack | place; robosuite / robocasa: the env name (Lift, ...)
    id: str | None = None             # gym: the registered id, e.g. gym_pusht/PushT-v0
    image_size: int = 96
    cameras: list[str] = field(default_factory=lambda: ["agentview", "wrist"])
    shadows: bool = False             # shadows dominate CPU rendering cost
    max_episode_steps: int | None = None  # None = the task's default
    robot: str = "Panda"              # robosuite / robocasa: any robosuite robot
    controller: str | None = None     # robosuite: an arm controller (OSC_POSE, JOINT_POSITION, ...) or a
                                      # composite-controller JSON file; None = the robot's default
    control_freq: int = 20            # robosuite / robocasa (Hz)
    instruction: str | None = None    # replaces the task's own instruction (gym envs have none)
    kwargs: dict[str, Any] = field(default_factory=dict)  # more keyword arguments for robosuite.make / gymnasium.make
    gym: GymMapping = field(default_factory=GymMapping)


@dataclass
class FeatureMapConfig:
    """Where the policy's features come from in the dataset (vla/data/mapping.py); a feature left
    unset is read under its own name. A source is a key or a slice of one, "observation.state[0:7]";
    state, action and environment_state take one source or a list of them, concatenated."""

    # camera -> image or video key, e.g. {top: observation.image}; null: the dataset lacks that camera
    # (zero images, its tokens masked)
    cameras: dict[str, str | None] = field(default_factory=dict)
    state: Any = None  # observation.state <- e.g. [observation.state[0:7], observation.environment_state]
    action: Any = None                # action <- e.g. action[0:7]
    environment_state: Any = None     # observation.environment_state (an auxiliary target's input)


@dataclass
class MixtureEntry:
    """One dataset of a mixture (vla/data/mixture.py): its name is the embodiment a checkpoint
    knows it by (its statistics, token and dimensions)."""

    name: str = "???"                 # required: e.g. panda_lift, sawyer_mt10
    repo_id: str | None = None        # hub id (or a name for a local dataset); None = local/<name>
    root: str | None = None           # local directory; None = read repo_id from the hub
    weight: float = 1.0               # > 0; see DatasetConfig.temperature
    episodes: list[int] | None = None
    features: FeatureMapConfig = field(default_factory=lambda: FeatureMapConfig())


@dataclass
class DatasetConfig:
    repo_id: str = "local/lift"       # hub id, or a name for a local dataset
    root: str | None = "data/lift"    # local directory; None = read repo_id from the hub
    episodes: list[int] | None = None  # a subset of episodes; None = all
    cache_features: bool = True       # cache frozen backbone features (needs a frozen backbone)
    video_backend: str | None = "pyav"  # torchcodec needs an ffmpeg this machine lacks
    features: FeatureMapConfig = field(default_factory=lambda: FeatureMapConfig())  # where each feature comes from
    # A weighted mixture of datasets instead of the one above (repo_id / root / episodes / features unused):
    # a sample comes from entry i with probability proportional to weight_i * frames_i ** (1 / temperature)
    # (1 = in proportion to size; larger flattens towards the weights alone, as OXE-style mixtures do)
    mixture: list[MixtureEntry] = field(default_factory=list)
    temperature: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 20000
    max_seconds: float | None = None  # also stop after this much training time (the LR schedule ends with it)
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05        # not applied to biases, norms and embeddings
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float | None = None    # e.g. 0.999; the checkpoint then holds the EMA weights
    init_from: str | None = None      # start from this checkpoint's weights (fine-tuning); fresh optimizer
    log_every: int = 100
    save_every: int = 5000
    eval_every: int = 0               # 0 = never during training
    eval_episodes: int = 10
    num_workers: int = 2              # DataLoader workers (uncached path only)
    amp: bool = True                  # bf16 autocast on CUDA; ignored on CPU
    debug: bool = False               # shrink every interval to a handful of steps


@dataclass
class CollectConfig:
    episodes: int = 100               # successful episodes to save (all episodes if not success_only)
    agent: str = "expert"             # "expert" or a checkpoint path / hub id
    embodiment: str | None = None     # a mixture checkpoint agent's entry to run as; None = the only one
    success_only: bool = True
    seed: int = 0                     # attempt k resets with seed + k
    max_attempts: int | None = None
    action_noise: float = 0.0         # std of Gaussian noise on executed actions; recorded ones stay clean (DART)
    noise_dims: list[int] | None = None  # action dims the noise perturbs (None: all)
    n_envs: int = 1                   # attempts run in this many subprocesses; the same episodes are saved
    grasp_mistakes: float = 0.0       # fraction of expert episodes that execute a wrong grasp and recover
                                      # (recorded: the recovery)
    place_mistakes: float = 0.0       # fraction that let go 3-4.5 cm beside the place target and pick the
                                      # object up again
    align_mistakes: float = 0.0       # fraction (of those without a wrong release) whose descent stops 1.5-3 cm
                                      # beside and 0.5-3 cm above the place target, then is corrected


@dataclass
class EvalConfig:
    checkpoint: str | None = None     # checkpoint directory or hub id
    episodes: int = 50
    n_envs: int = 2                   # parallel environments (subprocesses)
    seed: int = 100_000               # episode k uses seed + k; disjoint from collection seeds
    max_videos: int = 6
    n_action_steps: int | None = None  # override the replan rate; None = the checkpoint's
    inference_steps: int | None = None  # denoising steps per chunk (DDIM / Euler); None = the checkpoint's
    test_time_scaling: int | None = None  # DUST: vision steps per action step q (N_o = q * N_A);
                                          # None = the checkpoint's
    temporal_ensemble: float | None = None  # ACT-style ensembling coefficient; None = off
    embodiment: str | None = None     # a mixture checkpoint's entry to run as (its statistics, token, widths);
                                      # None = the only one
    output_dir: str | None = None     # None = <output_dir>/eval


@dataclass
class DeployConfig:
    checkpoint: str | None = None         # checkpoint directory or hub id; None = output_dir
    episodes: int = 1
    max_steps: int = 300                  # policy steps per episode (control periods, unless deploy.time_scale > 1)
    seed: int = 0                         # episode k of a simulated cell resets with seed + k
    stop_on_success: bool = True          # end an episode when the cell reports success (sim / twin)
    async_inference: bool = True
    n_action_steps: int | None = None     # actions run from each chunk; None = the checkpoint's
    temporal_ensemble: float | None = None  # ACT-style coefficient; None = off
    inference_steps: int | None = None    # denoising steps per chunk (DDIM / Euler); None = the checkpoint's
    test_time_scaling: int | None = None  # DUST: vision steps per action step q (N_o = q * N_A)
    max_inference_seconds: float = 2.0    # the arm holds while it waits for a chunk; longer than this ends the run
    embodiment: str | None = None         # a mixture checkpoint's entry to run as; None = the only one
    server: str | None = None             # ws://host:port of a `vla serve` to get chunks from (no torch here);
                                          # None = load the checkpoint in this process
    server_timeout: float = 10.0          # s to connect and for each reply; longer is a fault (the arm holds)
    threads: int | None = None            # torch intra-op threads for in-process inference; None = torch's default
                                          # (1 beside a simulator on 2 cores: 57 ms a chunk instead of 83)
    # Real-time chunking (vla/chunking.py): each chunk is sampled to agree with the plan that runs while it
    # is computed, instead of only skipping the actions it arrives too late for. Dita and DUST.
    rtc: bool = False
    rtc_method: str = "guidance"          # guidance (RTC's, a backward pass per denoising step) | inpaint (none)
                                          # | condition (a policy trained with policy.rtc_train_max_delay)
    rtc_max_guidance: float = 5.0         # RTC's beta: the cap on the guidance weight
    rtc_mask: str = "soft"                # soft (frozen actions, then a decay over the overlap) | hard (frozen only)
    # Added inference delay, to rehearse a slower policy: asynchronous inference waits this long
    # before handing over each chunk; synchronous inference (the lockstep sim) lets the chunk take
    # effect this many ms of control steps after its observation, the old plan running meanwhile.
    inject_delay_ms: float = 0.0
    # Real-arm speed: each policy step spans this many control periods (eef deltas divided evenly,
    # joint targets interpolated), so a policy trained at the tabletop's 1 m/s runs the same path
    # at 1 / time_scale of the speed instead of being clipped by robot.safety.max_eef_speed;
    # max_steps counts policy steps. 4 suits franka-ros2.yaml's 0.25 m/s.
    time_scale: int = 1
    dry_run: bool = False                 # compute, check and log commands; send none
    record: bool = True                   # record every episode as a LeRobot dataset
    dataset_root: str | None = None       # None = <output_dir>/deploy/data
    output_dir: str | None = None         # None = <output_dir>/deploy


@dataclass
class ServeConfig:
    """``vla serve``: a checkpoint served over a websocket (vla/serve.py) to `deploy.server`."""

    checkpoint: str | None = None         # checkpoint directory or hub id; None = output_dir
    host: str = "0.0.0.0"                 # the address to listen on (0.0.0.0: every interface)
    port: int = 8765                      # 0 = any free port (printed)
    threads: int | None = None            # torch intra-op threads; None = torch's default
    embodiment: str | None = None         # a mixture checkpoint's entry to serve as; None = the only one
    n_action_steps: int | None = None     # the chunking the server advertises; None = the checkpoint's
    temporal_ensemble: float | None = None  # unused by served chunks (the client ensembles); kept for the runtime
    inference_steps: int | None = None    # denoising steps per chunk; None = the checkpoint's
    test_time_scaling: int | None = None  # DUST: vision steps per action step; None = the checkpoint's


@dataclass
class ConvertConfig:
    """``vla convert``: robomimic / robosuite HDF5 demos -> a LeRobot dataset at dataset.root."""

    input: str | None = None          # the HDF5 file (robomimic dataset or robosuite demo.hdf5)
    cameras: list[str] | None = None  # vla camera names (wrist = robot0_eye_in_hand); None = every camera
                                      # image in the file ([agentview, wrist] if it has none); [] = no images
    image_size: int = 96              # side of the stored square images (resized, or rendered at this size)
    instruction: str | None = None    # the task text when the demos carry none (ep_meta "lang" wins)
    filter_key: str | None = None     # a robomimic mask, e.g. train / valid; None = every demo
    render: bool = False              # re-render every frame from the MuJoCo states even if the file has images
    fps: int | None = None            # None = the env's control_freq from the file, else 20
    max_episodes: int | None = None   # convert only the first N demos (in demo order)


@dataclass
class RunConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    robot: RobotConfig = field(default_factory=RobotConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    policy: Any = None                # the policy's own config dataclass (selected by name)
    output_dir: str = "outputs/run"
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    seed: int = 0


def open_mappings(schema: type = RunConfig, prefix: str = "") -> set[str]:
    """Dotted paths of the schema's free-form mappings (its dict-typed fields, e.g. ``env.kwargs``,
    ``env.gym.images``): keys a user adds there are data, not settings, so `vla` accepts
    ``env.gym.images.view=render`` where Hydra's struct mode would want a leading ``++``."""
    import dataclasses
    import typing

    found, hints = set(), typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        path = f"{prefix}{f.name}"
        if typing.get_origin(kind) is dict:
            found.add(path)
        elif dataclasses.is_dataclass(kind):
            found |= open_mappings(kind, f"{path}.")
    return found


def config_dir() -> Path:
    """The repository's ``configs/`` folder (override with $VLA_CONFIG_DIR)."""
    import os

    env = os.environ.get("VLA_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def to_dataclass(schema: type, node: Any, where: str):
    """Merge a config node into ``schema`` in struct mode; unknown keys and bad types are errors."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node if node is not None else {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        key = getattr(e, "full_key", None)
        raise ConfigError(f"bad config in '{where}'{f' at {key!r}' if key else ''}: {msg}") from None


# Numeric settings and the range each must lie in: checked when the config is composed, so a
# bad value is refused before any dataset, model or simulator loads. None (where a field allows
# it) means "off" or "the checkpoint's" and is never checked.
LIMITS: dict[str, tuple[str, float]] = {
    "train.steps": (">=", 1), "train.batch_size": (">=", 1), "train.lr": (">", 0), "train.max_seconds": (">", 0),
    "train.weight_decay": (">=", 0), "train.warmup_steps": (">=", 0), "train.grad_clip": (">", 0),
    "train.ema_decay": ("in (0, 1)", 0), "train.log_every": (">=", 1), "train.save_every": (">=", 1),
    "train.eval_every": (">=", 0), "train.eval_episodes": (">=", 1), "train.num_workers": (">=", 0),
    "collect.episodes": (">=", 1), "collect.n_envs": (">=", 1), "collect.action_noise": (">=", 0),
    "collect.max_attempts": (">=", 1),
    "eval.episodes": (">=", 1), "eval.n_envs": (">=", 1), "eval.max_videos": (">=", 0),
    "eval.n_action_steps": (">=", 1), "eval.inference_steps": (">=", 1), "eval.test_time_scaling": (">=", 1),
    "eval.temporal_ensemble": (">=", 0),
    "deploy.episodes": (">=", 1), "deploy.max_steps": (">=", 1), "deploy.n_action_steps": (">=", 1),
    "deploy.inference_steps": (">=", 1), "deploy.test_time_scaling": (">=", 1),
    "deploy.temporal_ensemble": (">=", 0), "deploy.max_inference_seconds": (">", 0), "deploy.server_timeout": (">", 0),
    "deploy.threads": (">=", 1), "deploy.rtc_max_guidance": (">", 0), "deploy.inject_delay_ms": (">=", 0),
    "deploy.time_scale": (">=", 1),
    "serve.port": (">=", 0), "serve.threads": (">=", 1), "serve.n_action_steps": (">=", 1),
    "serve.inference_steps": (">=", 1), "serve.test_time_scaling": (">=", 1),
    "env.image_size": (">=", 8), "env.max_episode_steps": (">=", 1), "dataset.temperature": (">", 0),
}


def check_limits(run: RunConfig) -> None:
    """Raise ConfigError naming the first setting of `LIMITS` that lies outside its range."""
    for path, (op, bound) in LIMITS.items():
        section, name = path.split(".")
        value = getattr(getattr(run, section), name, None)
        if value is None:
            continue
        if op == ">=":
            ok, want = value >= bound, f">= {bound:g}"
        elif op == ">":
            ok, want = value > bound, f"> {bound:g}"
        else:  # "in (0, 1)"
            ok, want = 0 < value < 1, op
        if not ok:
            raise ConfigError(f"{path} must be {want}, got {value}")


def parse_run_config(cfg: DictConfig) -> tuple[RunConfig, PolicyConfig | None]:
    """Split a composed Hydra config into the typed run config and the policy's config."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    policy_node = raw.pop("policy", None)
    run = to_dataclass(RunConfig, raw, "config")
    policy = None
    if policy_node is not None:
        name = policy_node.get("name")
        try:
            schema = policy_config_class(name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        policy = to_dataclass(schema, policy_node, "policy")
        try:
            policy.validate()
        except ValueError as e:
            raise ConfigError(f"policy ({name}): {e}") from None
    check_limits(run)
    return run, policy
