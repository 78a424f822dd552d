"""Shared fixtures: a tiny real dataset recorded by the real expert, an isolated feature cache."""

import os
import signal
import sys
import tempfile

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ["HF_HUB_OFFLINE"] = "1"
# lerobot loads parquet through HF datasets, which caches arrow copies; keep them out of ~/.cache.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="vla-test-hf-datasets-")

# Overrides that make a run tiny: a 2-layer Dita, small batches, frequent saves.
TINY = [
    "policy.width=64", "policy.depth=2", "policy.heads=2", "policy.horizon=8", "policy.n_action_steps=4",
    "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1", "train.num_workers=0", "train.ema_decay=0.9",
]


@pytest.fixture(scope="session", autouse=True)
def isolated_feature_cache(tmp_path_factory):
    os.environ["VLA_CACHE"] = str(tmp_path_factory.mktemp("vla_cache"))


def _scheduling() -> tuple[int, int] | None:
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        return None
    return os.sched_getscheduler(0), os.sched_getparam(0).sched_priority


if _scheduling() not in (None, (os.SCHED_OTHER, 0)):
    # A run started at a realtime policy hands it to every simulator, server and `vla` process the
    # tests start, which then starve each other on a small machine: the tests run as a user would.
    print(f"tests: the test process was started at (policy, priority) {_scheduling()}; running at SCHED_OTHER",
          file=sys.stderr)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
_SESSION_SCHEDULING = _scheduling()


def _give_scheduling_back(where: str) -> None:
    now = _scheduling()
    if now != _SESSION_SCHEDULING:
        os.sched_setscheduler(0, _SESSION_SCHEDULING[0], os.sched_param(_SESSION_SCHEDULING[1]))
        pytest.fail(f"{where} left the main thread's scheduling at (policy, priority) {now}, not "
                    f"{_SESSION_SCHEDULING} (SCHED_FIFO = {os.SCHED_FIFO})", pytrace=False)


@pytest.fixture(autouse=True)
def keeps_normal_scheduling():
    """No test may leave the test process's main thread at a realtime policy: every thread and
    process started afterwards inherits it, and at SCHED_FIFO 99 they starve the machine (a CI run
    timed out so). The test, or the fixture set up before it, that does is named and the policy is
    given back, so the rest of the run is unaffected."""
    _give_scheduling_back("a fixture set up for this test")
    yield
    _give_scheduling_back("this test")


@pytest.fixture(scope="session")
def lift_dataset(tmp_path_factory):
    """Two successful expert episodes of `lift`, recorded by `vla collect` in-process."""
    from vla.cli import main

    root = tmp_path_factory.mktemp("datasets") / "lift"
    assert main(["collect", "collect.episodes=2", f"dataset.root={root}", "dataset.repo_id=local/lift"]) == 0
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, lift_dataset):
    """A 4-step dita training run with checkpoints at steps 2 and 4."""
    from vla.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    args = ["train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=4", "train.save_every=2", *TINY]
    assert main(args) == 0
    return out


LEROBOT_FEATURES = ["observation.images.agentview", "observation.images.wrist", "observation.state"]
TINY_ACT = ["pretrained_backbone_weights=None", "dim_model=32", "n_heads=2", "dim_feedforward=64",
            "n_encoder_layers=1", "n_decoder_layers=1", "n_vae_encoder_layers=1", "latent_dim=8", "chunk_size=8",
            "n_action_steps=4"]


@pytest.fixture(scope="session")
def act_run(lift_dataset, tmp_path_factory):
    """A LeRobot ACT trained 2 steps by benchmarks.lerobot_train on the tiny lift dataset."""
    from benchmarks.lerobot_train import main as lerobot_train

    out = tmp_path_factory.mktemp("lerobot") / "act"
    lerobot_train(["--policy", "act", "--dataset-root", str(lift_dataset), "--repo-id", "local/lift",
                   "--output-dir", str(out), "--features", *LEROBOT_FEATURES, "--steps", "2", "--batch-size", "4",
                   "--log-every", "1", "--set", *TINY_ACT])
    return out


@pytest.fixture(scope="session")
def ros_domain():
    """A DDS domain of its own for this test session, so ROS tests never hear another run's nodes."""
    domain = str(1 + os.getpid() % 100)
    os.environ["ROS_DOMAIN_ID"] = domain
    return domain


def twin_topics(cfg):
    """Point a robot config at the digital twin's episode / success topics."""
    from envs.robot.twin import EPISODE_TOPIC, RESET_TOPIC, SUCCESS_TOPIC

    cfg.topics.success, cfg.topics.reset, cfg.topics.episode = SUCCESS_TOPIC, RESET_TOPIC, EPISODE_TOPIC
    return cfg


@pytest.fixture(scope="module")
def twin(ros_domain):
    """The digital twin (lift, seed 0) serving franka_ros2-style topics in this process."""
    from envs.robot.config import RobotConfig
    from envs.robot.twin import DigitalTwin

    with DigitalTwin(RobotConfig()) as twin:
        yield twin


def hear_ctrl_c() -> None:
    """SIGINT raises KeyboardInterrupt in this process. A shell starts background jobs with SIGINT
    ignored, children inherit that, and Python then installs no Ctrl-C handler: a test of what
    Ctrl-C does must not depend on how the test run was started."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def once_deploy_is_stepping(action) -> None:
    """Run ``action`` on a thread once a deploy loop in this process is stepping (its inference
    thread is up, plus a second): a fault injected mid-run, not during start-up."""
    import threading
    import time

    def wait_then_act():
        deadline = time.monotonic() + 300
        while not any(t.name == "vla-inference" for t in threading.enumerate()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        time.sleep(1.0)
        action()
    threading.Thread(target=wait_then_act, daemon=True).start()


def child_hears_ctrl_c() -> None:
    """preexec_fn for a child process: SIGINT back to its default, so Python installs its handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory) -> dict[str, str]:
    """Local model directories of tiny random configs of real transformers VLM classes (SmolVLM's
    Idefics3, PaliGemma, Qwen2.5-VL; a SigLIP tower and a Llama for the pairing), with the embedded backbone's
    WordPiece tokenizer: the VLM backbone's real loading path, offline. name -> directory."""
    import torch
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig, LlamaForCausalLM,
                              PaliGemmaConfig, PaliGemmaForConditionalGeneration, Qwen2_5_VLConfig,
                              Qwen2_5_VLForConditionalGeneration, SiglipVisionConfig, SiglipVisionModel)

    from vla.backbone.embedded import load_text_encoder

    _, tokenizer = load_text_encoder()
    # Fixed weights: otherwise they depend on which tests drew random numbers before this fixture
    # (a draw once left OmniJARVIS-on-Qwen's second step reaching only 24 of 44 parameters).
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                vocab_size=len(tokenizer))
    models = {
        "idefics3": Idefics3ForConditionalGeneration(Idefics3Config(
            vision_config=vision, text_config={**text, "num_key_value_heads": 2, "max_position_embeddings": 512},
            scale_factor=2)),
        "paligemma": PaliGemmaForConditionalGeneration(PaliGemmaConfig(
            vision_config={**vision, "projection_dim": 64}, projection_dim=64,
            text_config={**text, "num_key_value_heads": 1, "head_dim": 16})),
        "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=32,
                               fullatt_block_indexes=[1]),
            text_config={**text, "num_key_value_heads": 2,
                         "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}})),
        # a SigLIP tower and a causal LM that never met: the pairing (backbone.vision_model + model)
        "siglip": SiglipVisionModel(SiglipVisionConfig(**vision)),
        "llama": LlamaForCausalLM(LlamaConfig(**text, num_key_value_heads=2, max_position_embeddings=512)),
    }
    root = tmp_path_factory.mktemp("vlms")
    dirs = {}
    for family, model in models.items():
        model.save_pretrained(root / family)
        tokenizer.save_pretrained(root / family)
        dirs[family] = str(root / family)
    return dirs


# A dataset in LeRobot's PushT convention (one camera called observation.image, 480x640 video),
# with a 4-D state and a 3-D action of which a PushT policy uses the first two.
PUSHT_STYLE_FEATURES = {
    "observation.image": {"dtype": "video", "shape": (480, 640, 3), "names": ["height", "width", "channels"]},
    "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "vx", "vy"]},
    "observation.environment_state": {"dtype": "float32", "shape": (3,), "names": None},
    "action": {"dtype": "float32", "shape": (3,), "names": ["ax", "ay", "unused"]},
}
PUSHT_TASK = "push the T-shaped block onto the T-shaped target"


@pytest.fixture(scope="session")
def pusht_style(tmp_path_factory):
    """Two 12-frame episodes written with lerobot's own API (``LeRobotDataset.create``), not
    vla's recorder: state (100 + t, 200 + episode, 0.5, -0.5), action (300 + t, 400 - t, 7)."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from vla.scheduling import without_realtime_threads

    root = tmp_path_factory.mktemp("byod") / "pusht-style"
    ramp = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None]
    # lerobot's AV1 encoder would raise this (root) process's main thread to SCHED_FIFO 99
    with without_realtime_threads():
        ds = LeRobotDataset.create("lab/pusht-style", 10, PUSHT_STYLE_FEATURES, root=root, use_videos=True,
                                   video_backend="pyav")
        for episode in range(2):
            for t in range(12):
                image = np.broadcast_to((ramp + 20 * t) % 256, (480, 640, 3)).astype(np.uint8)
                ds.add_frame({"observation.image": image,
                              "observation.state": np.array([100 + t, 200 + episode, 0.5, -0.5], np.float32),
                              "observation.environment_state": np.array([t, 0, 1], np.float32),
                              "action": np.array([300 + t, 400 - t, 7], np.float32), "task": PUSHT_TASK})
            ds.save_episode()
        ds.finalize()
    return root
