"""DUST: decoupled flow matching, asynchronous sampling, the future-vision target, action-free training."""

import copy

import pytest
import torch

from policies.dust.blocks import Modulation
from tests.test_policy_contract import ACTION_DIM, B, raw_batch, tiny_config
from vla.features import ACTION, OBS_STATE
from vla.policy import make_policy


@pytest.fixture(scope="module")
def dust():
    """A tiny DUST whose adaLN modulations are not zero: at initialisation (adaLN-Zero) every
    block is the identity, so the streams could not yet influence each other."""
    torch.manual_seed(0)
    cfg = tiny_config("dust")
    policy = make_policy(cfg)
    for m in policy.modules():
        if isinstance(m, Modulation):
            torch.nn.init.normal_(m.proj.weight, std=0.1)
    return cfg, policy


def obs_of(cfg):
    return raw_batch(cfg, with_actions=False)


def cached_batch(policy, batch):
    """The batch with its current and future frames (and instructions) encoded once, in the
    feature-cache layout, so that repeated compute_loss calls skip the image encoder."""
    out = {k: v for k, v in batch.items() if not k.startswith("observation.images.") and k != "future_images"}
    with torch.no_grad():
        out["frames"], out["text"] = policy.encode_observation(batch)
        if "future_images" in batch:
            out["future_frames"] = policy.encode_future(batch)
    return out


def tile(batch, n):
    """A new batch holding every sample of a (cached) batch n times in a row."""
    def rep(v):
        if isinstance(v, dict):
            return {k: rep(x) for k, x in v.items()}
        if isinstance(v, list):
            return [x for x in v for _ in range(n)]
        return v.repeat_interleave(n, dim=0)
    return {k: rep(v) for k, v in batch.items()}


@pytest.mark.parametrize("n_a, q, update", [(4, 1, "end"), (4, 4, "end"), (4, 8, "start"), (2, 3, "start")])
def test_asynchronous_sampling_counts_passes_and_updates(dust, n_a, q, update):
    cfg, policy = dust
    policy.config.noise.num_inference_steps, policy.config.vision_ratio = n_a, q
    policy.config.action_update = update
    policy.counters.update(forward_passes=0, action_updates=0)
    try:
        actions = policy.eval().sample_actions(obs_of(cfg))
    finally:
        policy.config.noise.num_inference_steps, policy.config.vision_ratio, policy.config.action_update = 4, 1, "end"
    assert actions.shape == (B, cfg.horizon, ACTION_DIM)
    assert policy.counters == {"forward_passes": n_a * q, "action_updates": n_a}  # N_o passes, N_A updates
    assert policy.last_action_time == 0.0  # the actions integrate all the way to data (DUST's tau = 1)


def test_action_update_position_in_the_block_matters(dust):
    """With q > 1, updating actions at the start or the end of each block of vision steps uses
    different velocities, so the chunks differ; with q = 1 both are the same schedule."""
    cfg, policy = dust
    obs, noise = obs_of(cfg), torch.randn(B, cfg.horizon, ACTION_DIM)

    def sample(q, update):
        policy.config.vision_ratio, policy.config.action_update = q, update
        try:
            return policy.eval().sample_actions(obs, noise=noise)
        finally:
            policy.config.vision_ratio, policy.config.action_update = 1, "end"

    torch.testing.assert_close(sample(1, "end"), sample(1, "start"))
    assert not torch.allclose(sample(4, "end"), sample(4, "start"))


class _Stop(Exception):
    pass


def test_decoupled_times_are_independent_and_joint_noise_shares_one(dust, monkeypatch):
    """decoupled_noise=true: the times compute_loss hands the two streams are drawn apart (over
    3,072 samples they are uncorrelated and both follow the Beta law); false: one shared time."""
    cfg, policy = dust
    batch = tile(cached_batch(policy, raw_batch(cfg)), 1024)
    seen = {}

    def spy(self, state, actions, t_a, future, t_o, ctx, committed=None):
        seen["t_a"], seen["t_o"] = t_a.clone(), t_o.clone()
        raise _Stop  # the times are all this test needs

    monkeypatch.setattr(type(policy), "velocity", spy)
    torch.manual_seed(0)
    with pytest.raises(_Stop):
        policy.compute_loss(batch)
    t_a, t_o = seen["t_a"], seen["t_o"]
    assert len(t_a) == 3 * 1024 and (t_a != t_o).float().mean() > 0.99
    corr = torch.corrcoef(torch.stack([t_a, t_o]))[0, 1].item()
    assert abs(corr) < 0.1, f"decoupled times are correlated: r = {corr:.3f}"
    for t in (t_a, t_o):  # both from the same law: mean 0.999 * 0.6 + 0.001
        assert abs(t.mean().item() - 0.6004) < 0.03
    policy.config.decoupled_noise = False
    try:
        with pytest.raises(_Stop):
            policy.compute_loss(batch)
    finally:
        policy.config.decoupled_noise = True
    assert torch.equal(seen["t_a"], seen["t_o"])


def test_default_time_law_is_beta_1_5_1_towards_noise():
    """t = 0.999 * Beta(1.5, 1) + 0.001 (t = 1 noise): mean 0.6, mass near the noise end,
    GR00T's / DUST's tau law written in the toolkit's convention."""
    policy = make_policy(tiny_config("dust"))
    torch.manual_seed(0)
    t = policy.process.sample_time(200_000)
    assert 0.001 <= t.min() and t.max() <= 1.0
    assert abs(t.mean().item() - (0.999 * 0.6 + 0.001)) < 0.005
    assert (t > 0.5).float().mean() > 0.6  # P(Beta(1.5, 1) > 0.5) = 1 - 0.5 ** 1.5 = 0.65


def test_loss_is_action_plus_lambda_times_world_model(dust):
    cfg, policy = dust
    batch = raw_batch(cfg)
    for lam in (1.0, 0.25):
        policy.config.lambda_wm = lam
        torch.manual_seed(3)
        loss, logs = policy.compute_loss(copy.deepcopy(batch))
        assert logs["wm_loss"] > 0
        assert loss.item() == pytest.approx(logs["action_loss"] + lam * logs["wm_loss"], rel=1e-5)
    policy.config.lambda_wm = 1.0


def test_training_predictions_do_not_see_where_the_episode_ends(dust, monkeypatch):
    """Padded actions (past the episode's end) leave the loss but not the attention: sampling
    has no padding, so a mask seen only in training would tell the model where episodes end
    (DUST read its stack release from it). The same noise gives the same velocities with and
    without padding; only the loss changes."""
    cfg, policy = dust
    batch = cached_batch(policy, raw_batch(cfg))
    batch[ACTION][:, -5:] = batch[ACTION][:, -6:-5]  # the loader clamps to the episode's last action
    original = type(policy).velocity
    seen = []

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(out[0].detach().clone())
        return out

    monkeypatch.setattr(type(policy), "velocity", spy)
    losses = []
    for pad_tail in (0, 5):
        b = copy.deepcopy(batch)
        b["action_is_pad"][:] = False
        if pad_tail:
            b["action_is_pad"][:, -pad_tail:] = True
        torch.manual_seed(7)
        losses.append(policy.compute_loss(b)[1]["action_loss"])
    torch.testing.assert_close(seen[0], seen[1])
    assert losses[0] != pytest.approx(losses[1])


def test_shared_prefix_noise_samples_equal_the_repeated_batch(dust):
    """noise_samples=K: the loss and gradients of the batch repeated K times, both streams."""
    cfg, policy = dust
    batch = cached_batch(policy, raw_batch(cfg))
    batch["action_is_pad"][0, -3:] = True  # padding is repeated with its sample
    losses, grads = [], []
    for k, b in ((3, batch), (1, tile(batch, 3))):
        policy.config.noise_samples = k
        policy.zero_grad()
        torch.manual_seed(5)
        loss, logs = policy.compute_loss(copy.deepcopy(b))
        loss.backward()
        losses.append(torch.tensor([logs["action_loss"], logs["wm_loss"]]))
        grads.append(policy.action_in.weight.grad.clone())
    policy.config.noise_samples = 1
    policy.zero_grad()
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-6)


def test_lambda_zero_removes_the_vision_stream():
    cfg = tiny_config("dust")
    cfg.lambda_wm = 0.0
    policy = make_policy(cfg)
    assert cfg.future_offsets() == [] and not hasattr(policy, "vision_blocks")
    loss, logs = policy.compute_loss(raw_batch(cfg))
    assert "wm_loss" not in logs and loss.item() == pytest.approx(logs["action_loss"])
    assert policy.sample_actions(obs_of(cfg)).shape == (B, cfg.horizon, ACTION_DIM)
    with pytest.raises(ValueError, match="lambda_wm=0"):
        policy.set_test_time_scaling(4)


def test_future_past_the_episode_end_has_no_world_model_loss(dust):
    cfg, policy = dust
    batch = raw_batch(cfg)
    batch["future_is_pad"][:] = False
    batch["future_is_pad"][0] = True
    torch.manual_seed(5)
    a, _ = policy.compute_loss(copy.deepcopy(batch))
    for images in batch["future_images"].values():
        images[0] = torch.rand_like(images[0])  # another frame for the padded sample only
    torch.manual_seed(5)
    b, _ = policy.compute_loss(batch)
    torch.testing.assert_close(a, b)


def test_a_camera_the_dataset_lacks_has_no_world_model_loss(dust):
    """camera_is_pad (a dataset mapped with cameras.<c>: null): that camera's future tokens
    (a black frame's embedding) carry no loss, so what stands in for them does not matter."""
    from vla.features import CAMERA_PAD

    cfg, policy = dust
    batch = raw_batch(cfg)
    batch["future_is_pad"][:] = False
    batch[CAMERA_PAD] = torch.tensor([[False, True]]).expand(len(batch["future_is_pad"]), -1)
    torch.manual_seed(5)
    a, logs = policy.compute_loss(copy.deepcopy(batch))
    second = cfg.backbone.cameras[1]
    batch["future_images"][second] = torch.rand_like(batch["future_images"][second])
    torch.manual_seed(5)
    b, _ = policy.compute_loss(batch)
    torch.testing.assert_close(a, b)
    assert logs["wm_loss"] > 0


def test_future_target_is_the_2x2_pooled_frame_embedding(dust):
    cfg, policy = dust
    frames = {"vision": torch.randn(5, 2, 9, 7)}  # a 3x3 grid per camera
    grid_before = policy.backbone.config.vision_grid
    policy.backbone.config.vision_grid = 3
    try:
        target = policy.backbone.future_target(frames, 2)
        assert policy.backbone.future_grid(2) == (2, 2, 2)
    finally:
        policy.backbone.config.vision_grid = grid_before
    assert target.shape == (5, 2 * 4, 7)
    grid = frames["vision"][:, 1].reshape(5, 3, 3, 7)
    torch.testing.assert_close(target[:, 4], grid[:, :2, :2].mean(dim=(1, 2)))  # camera 1, top-left window
    torch.testing.assert_close(target[:, 7], grid[:, 2, 2])  # bottom-right window clipped to one patch


def test_world_model_target_is_the_embedding_of_the_future_frame(dust, monkeypatch):
    """L_wm regresses the velocity towards the frozen backbone's pooled (and layer-normed)
    embedding of the batch's future frame: an oracle that returns the exact velocity of that
    embedding gets L_wm = 0, one built from the current frame's embedding does not."""
    cfg, policy = dust
    batch = raw_batch(cfg)
    batch["future_is_pad"][:] = False
    cams = cfg.backbone.cameras

    def embedding(images):  # the frozen backbone's target for one frame per sample, computed here
        with torch.no_grad():
            target = policy.backbone.future_target(policy.backbone.encode_frames(images), cfg.future_pool)
        return torch.nn.functional.layer_norm(target, target.shape[-1:])

    future = embedding({c: batch["future_images"][c][:, -1] for c in cams})
    current = embedding({c: batch[f"observation.images.{c}"][:, -1] for c in cams})
    target, valid = policy.future_tokens(batch)
    torch.testing.assert_close(target, future)
    assert valid.all() and (target - current).pow(2).mean() > 0.1  # the frames are told apart

    original = type(policy).velocity

    def oracle_of(x0):
        def oracle(self, state, actions, t_a, noisy_o, t_o, ctx, committed=None):
            v_a, _ = original(self, state, actions, t_a, noisy_o, t_o, ctx)
            return v_a, (noisy_o - x0) / t_o[:, None, None]  # noise - x0, given x_t and t
        return oracle

    many = tile(cached_batch(policy, batch), 32)  # 96 draws of noise and time
    losses = {}
    for name, x0 in (("future", future), ("current", current)):
        monkeypatch.setattr(type(policy), "velocity", oracle_of(x0.repeat_interleave(32, dim=0)))
        torch.manual_seed(0)
        losses[name] = policy.compute_loss(many)[1]["wm_loss"]
    assert losses["future"] < 1e-6 and losses["current"] > 0.1, losses


def test_world_model_loss_falls_on_a_fixed_batch():
    """A few dozen AdamW steps on one batch: L_wm, measured on fixed noise and times, drops
    clearly (it is a learnable regression, and its gradient reaches the vision stream)."""
    torch.manual_seed(0)
    cfg = tiny_config("dust")
    policy = make_policy(cfg)
    batch = cached_batch(policy, raw_batch(cfg))
    batch["future_is_pad"][:] = False
    probe = tile(batch, 16)  # 48 draws of noise and time per measurement

    def wm_loss():
        torch.manual_seed(123)
        with torch.no_grad():
            return policy.compute_loss(probe)[1]["wm_loss"]

    start = wm_loss()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    for _ in range(60):
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = wm_loss()
    assert end < 0.7 * start, f"L_wm {start:.3f} -> {end:.3f}"


def test_more_vision_steps_refine_the_vision_estimate_not_the_action_shape(dust):
    """Test-time scaling: with the same observation and noise, q = 4 vision steps per action
    step give another future estimate than q = 1, closer to a fine-grid (q = 64) solution of
    the same joint ODE; the actions keep their shape and their N_A = 4 steps."""
    cfg, policy = dust
    obs = cached_batch(policy, obs_of(cfg))
    noise = torch.randn(B, cfg.horizon, ACTION_DIM)
    out = {}
    for q in (1, 4, 64):
        policy.config.vision_ratio = q
        try:
            out[q] = policy.eval().sample_joint(obs, noise=noise)
        finally:
            policy.config.vision_ratio = 1
    (a1, f1), (a4, f4), (_, f64) = out[1], out[4], out[64]
    assert f1.shape == f4.shape == (B, policy.n_future, policy.vision_dim)
    assert a1.shape == a4.shape == (B, cfg.horizon, ACTION_DIM)
    torch.testing.assert_close(a1, policy.sample_actions(obs, noise=noise))  # sample_actions is sample_joint's chunk
    assert (f4 - f1).norm() > 1e-3 * f1.norm()  # measured: 6e-3 of the estimate's norm
    assert (f4 - f64).norm() < 0.5 * (f1 - f64).norm()  # Euler converges: measured 2.0e-3 vs 6.3e-3


def test_the_action_stream_attends_to_the_vision_stream(dust):
    """The streams meet in the MM-DiT joint attention: other future-vision tokens (everything
    else fixed) change the action velocity, and other actions change the vision velocity."""
    cfg, policy = dust
    obs = cached_batch(policy, obs_of(cfg))
    with torch.no_grad():
        ctx = policy._context(policy.prefix(obs))
        state, actions, t = obs[OBS_STATE], torch.randn(B, cfg.horizon, ACTION_DIM), torch.full((B,), 0.5)
        future = torch.randn(B, policy.n_future, policy.vision_dim)
        v_a, v_o = policy.velocity(state, actions, t, future, t, ctx)
        v_a_other_vision, _ = policy.velocity(state, actions, t, torch.randn_like(future), t, ctx)
        _, v_o_other_actions = policy.velocity(state, torch.randn_like(actions), t, future, t, ctx)
        v_a_again, _ = policy.velocity(state, actions, t, future, t, ctx)
    torch.testing.assert_close(v_a_again, v_a, rtol=0, atol=0)  # deterministic: any change below is the input's
    assert (v_a_other_vision - v_a).norm() > 1e-5 * v_a.norm()  # measured: 4e-4 with these weights
    assert (v_o_other_actions - v_o).norm() > 1e-5 * v_o.norm()


@pytest.mark.parametrize("field, value", [("conditioning", "stream"), ("prefix_depth", 2)])
def test_conditioning_variants_train_and_sample(field, value):
    """The prefix as a third MM-DiT stream; self-attention blocks over the prefix before cross-attention."""
    cfg = tiny_config("dust")
    setattr(cfg, field, value)
    policy = make_policy(cfg)
    loss, _ = policy.compute_loss(raw_batch(cfg))
    loss.backward()
    assert torch.isfinite(loss)
    assert policy.sample_actions(obs_of(cfg)).shape == (B, cfg.horizon, ACTION_DIM)


def test_action_free_mode_trains_only_the_world_model():
    cfg = tiny_config("dust")
    cfg.action_free = True
    policy = make_policy(cfg)
    assert ACTION not in cfg.frame_offsets()
    batch = raw_batch(cfg)
    batch.pop(ACTION), batch.pop("action_is_pad")
    loss, logs = policy.compute_loss(batch)
    assert "action_loss" not in logs and loss.item() == pytest.approx(logs["wm_loss"])
    loss.backward()
    assert policy.action_out.decoder.weight.grad is None  # no action loss reaches the action decoder
    assert not policy.action_out.decoder.weight.requires_grad  # so DDP sees no parameter without a gradient
    assert policy.vision_in[0].weight.grad.abs().sum() > 0


def test_bad_dust_configs_are_refused():
    for field, value, match in (("conditioning", "concat", "conditioning"),
                                ("action_update", "middle", "action_update"),
                                ("vision_ratio", 0, "vision_ratio"), ("noise_samples", 0, "noise_samples")):
        cfg = tiny_config("dust")
        setattr(cfg, field, value)
        with pytest.raises(ValueError, match=match):
            make_policy(cfg)
    cfg = tiny_config("dust")
    cfg.noise.kind = "diffusion"
    with pytest.raises(ValueError, match="flow"):
        make_policy(cfg)


def test_dita_has_no_test_time_scaling_knob():
    policy = make_policy(tiny_config("dita"))
    with pytest.raises(ValueError, match="no test-time scaling"):
        policy.set_test_time_scaling(4)


def test_state_is_a_token_of_the_action_stream_not_of_the_prefix(dust):
    cfg, policy = dust
    assert not cfg.backbone.use_state
    obs, noise = obs_of(cfg), torch.randn(B, cfg.horizon, ACTION_DIM)
    a = policy.eval().sample_actions(obs, noise=noise)
    obs[OBS_STATE] = obs[OBS_STATE] + 1.0
    assert not torch.allclose(a, policy.sample_actions(obs, noise=noise))


# --- end to end through the CLI ------------------------------------------------------------
TINY_DUST = ["policy=dust-small", "policy.width=32", "policy.heads=2", "policy.mmdit_depth=1", "policy.stream_depth=1",
             "policy.horizon=8", "policy.n_action_steps=4", "train.batch_size=4", "train.warmup_steps=1",
             "train.log_every=1", "train.num_workers=0", "train.save_every=2"]


def run_cli(capsys, *args):
    from vla.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def dust_run(lift_dataset, tmp_path_factory):
    from vla.cli import main

    out = tmp_path_factory.mktemp("runs") / "dust"
    assert main(["train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=2", *TINY_DUST]) == 0
    return out


def test_train_logs_both_losses_and_eval_reports_test_time_scaling(dust_run, tmp_path, capsys):
    header, *rows = (dust_run / "metrics.csv").read_text().splitlines()
    assert "action_loss" in header and "wm_loss" in header and len(rows) == 2
    out_dir = tmp_path / "eval"
    code, out, err = run_cli(capsys, "eval", f"eval.checkpoint={dust_run}", "eval.episodes=1", "eval.n_envs=1",
                             "eval.max_videos=0", "env.max_episode_steps=8", "eval.test_time_scaling=4",
                             "eval.inference_steps=8", f"eval.output_dir={out_dir}")
    assert code == 0, err
    import json

    protocol = json.loads((out_dir / "report.json").read_text())["protocol"]
    assert protocol["vision_denoising_steps (N_o)"] == 32 and protocol["action_denoising_steps (N_A)"] == 8


def test_raw_frames_path_reads_the_future_frame_through_lerobot(lift_dataset, tmp_path):
    """Without the feature cache the future frame comes from LeRobot's delta timestamps."""
    from vla.config import DatasetConfig
    from vla.data.pipeline import TrainingData

    cfg = tiny_config("dust")
    data = TrainingData(DatasetConfig(root=str(lift_dataset), cache_features=False), cfg, seed=0, device="cpu",
                        num_workers=0, batch_size=4, progress=False)
    batch = data.next_batch()
    cam = cfg.backbone.cameras[0]
    assert batch[f"observation.images.{cam}"].shape[1] == cfg.n_obs_steps
    assert batch["future_images"][cam].shape[:2] == (4, 1) and batch["future_is_pad"].shape == (4, 1)
    policy = make_policy(data.policy_cfg)
    loss, logs = policy.compute_loss(batch)
    assert torch.isfinite(loss) and "wm_loss" in logs
    # the frame read is the dataset's frame H steps later (its episode's last one past the end)
    from vla.data.source import open_dataset

    ds = open_dataset(lift_dataset, video_backend="pyav")
    episode = ds.hf_dataset.with_format(None)["episode_index"]
    for row, i in enumerate(batch["index"].tolist()):
        last = max(j for j, e in enumerate(episode) if e == episode[i])
        want = ds[min(i + cfg.horizon, last)][f"observation.images.{cam}"]
        assert batch["future_is_pad"][row, 0].item() == (i + cfg.horizon > last)
        torch.testing.assert_close(batch["future_images"][cam][row, 0], want, atol=2 / 255, rtol=0)
        if i + cfg.horizon <= last:  # and frame i is not that frame: the check tells them apart
            assert (ds[i][f"observation.images.{cam}"] - want).abs().max() > 0.1


def test_cached_future_frame_is_the_frame_horizon_steps_later(lift_dataset):
    from vla.config import DatasetConfig
    from vla.data.pipeline import TrainingData

    cfg = tiny_config("dust")
    data = TrainingData(DatasetConfig(root=str(lift_dataset)), cfg, seed=0, device="cpu", num_workers=0,
                        batch_size=4, progress=False)
    sampler = data._sampler
    end = int(sampler.ep_end[0])  # first episode: rows [0, end)
    idx = torch.tensor([0, end - cfg.horizon - 1, end - cfg.horizon, end - 1])
    batch = sampler.get(idx)
    assert batch["future_is_pad"][:, 0].tolist() == [False, False, True, True]
    vision = sampler.frames["vision"].float()
    torch.testing.assert_close(batch["future_frames"]["vision"][0, 0], vision[cfg.horizon])
    torch.testing.assert_close(batch["future_frames"]["vision"][3, 0], vision[end - 1])  # clamped to the edge


def test_action_free_pretraining_then_fine_tuning(lift_dataset, tmp_path, capsys):
    """Video-only pretraining on the dataset with its action feature removed (by lerobot's own
    dataset tools), then fine-tuning from those weights on the data with actions."""
    from lerobot.datasets.dataset_tools import remove_feature

    from vla.data.source import open_dataset

    video_only = tmp_path / "video_only"
    remove_feature(open_dataset("local/lift", root=lift_dataset), "action", output_dir=video_only,
                   repo_id="local/video")
    assert "action" not in open_dataset("local/video", root=video_only).meta.features
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    base = [f"dataset.root={video_only}", "dataset.repo_id=local/video", "policy.action_free=true", *TINY_DUST]
    code, _, err = run_cli(capsys, "train", f"output_dir={pre}", "train.steps=2", *base)
    assert code == 2 and "policy.action_dim" in err  # nothing says how large the actions will be
    code, _, err = run_cli(capsys, "train", f"output_dir={pre}", "train.steps=2", "policy.action_dim=7", *base)
    assert code == 0, err
    header = (pre / "metrics.csv").read_text().splitlines()[0]
    assert "wm_loss" in header and "action_loss" not in header
    code, _, err = run_cli(capsys, "eval", f"eval.checkpoint={pre}", "eval.episodes=1")
    assert code == 2 and "without actions" in err
    code, out, err = run_cli(capsys, "train", f"dataset.root={lift_dataset}", f"output_dir={fine}", "train.steps=2",
                             f"train.init_from={pre}", *TINY_DUST)
    assert code == 0, err
    assert "initialised" in out
    from safetensors.torch import load_file

    w_pre = load_file(pre / "checkpoints" / "last" / "pretrained_model" / "model.safetensors")
    w_fine = load_file(fine / "checkpoints" / "000002" / "pretrained_model" / "model.safetensors")
    moved = [k for k in w_pre if (w_pre[k] - w_fine[k]).abs().max() < 0.05]
    assert len(moved) == len(w_pre), "two fine-tuning steps start from the pretrained weights"


def test_init_from_a_different_architecture_is_one_line(dust_run, lift_dataset, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", f"dataset.root={lift_dataset}", f"output_dir={tmp_path / 'x'}",
                           "train.steps=1", f"train.init_from={dust_run}", *TINY_DUST, "policy.width=64")
    assert code == 2 and "does not match" in err


def test_deploy_takes_test_time_scaling(dust_run, tmp_path, capsys):
    """Issue 3's knob in deployment: `deploy.test_time_scaling` (and the number of denoising steps)
    reaches the sampler on a robot."""
    import json

    out = tmp_path / "deploy"
    code, _, err = run_cli(capsys, "deploy", f"deploy.checkpoint={dust_run}", f"deploy.output_dir={out}",
                           "deploy.max_steps=3", "deploy.record=false", "deploy.test_time_scaling=4",
                           "deploy.inference_steps=8")
    assert code == 0, err
    protocol = json.loads((out / "summary.json").read_text())["protocol"]
    assert protocol["vision_denoising_steps (N_o)"] == 32 and protocol["action_denoising_steps (N_A)"] == 8
