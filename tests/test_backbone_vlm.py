"""The transformers VLM backbone (backbone.name=vlm) on tiny random configs of real model classes:
the layer it reads, the fine-tuning modes, dtype, caching and bad settings. Policies on top of it
are covered by the contract tests (tests/test_policy_contract.py), parametrized over backbones."""

import pytest
import torch

from vla.backbone.base import BackboneConfig, make_backbone
from vla.errors import ConfigError

FAMILIES = ["idefics3", "paligemma", "qwen2_5_vl", "siglip+llama"]
T, B = 2, 3


def build(tiny_vlms, family, **settings):
    vision, _, lm = family.rpartition("+")
    cfg = BackboneConfig(name="vlm", model=tiny_vlms[lm], vision_model=tiny_vlms[vision] if vision else None,
                         max_text_tokens=8, **settings)
    return make_backbone(cfg, width=48, n_obs_steps=T, state_dim=11)


def inputs(backbone):
    torch.manual_seed(0)
    images = {c: torch.rand(B * T, 3, 64, 64) for c in backbone.config.cameras}
    frames = {k: v.unflatten(0, (B, T)) for k, v in backbone.encode_frames(images).items()}
    return frames, backbone.encode_text(["lift the red cube"] * B), torch.randn(B, T, 11)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_reads_the_chosen_lm_layer(tiny_vlms, family):
    from transformers import AutoModelForImageTextToText

    backbone = build(tiny_vlms, family, hidden_layer=2).eval()
    assert len(backbone.lm.layers) == 2  # the layers above the one read are dropped
    frames, text, state = inputs(backbone)
    with torch.no_grad():
        prefix = backbone(frames, text, state)
    assert prefix.tokens.shape == (B, backbone.num_tokens(T), 48) and prefix.mask.all(dim=0)[-T:].all()
    # the same sequence through the whole pretrained LM: its hidden state after layer 2, normed
    if family == "siglip+llama":
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(tiny_vlms["llama"]).eval().model
        vision = backbone.connector(frames["vision"])  # the learned connector into the LM's space
    else:
        full = AutoModelForImageTextToText.from_pretrained(tiny_vlms[family]).eval()
        lm = full.model.text_model if family == "idefics3" else full.model.language_model
        vision = frames["vision"]
    images = (vision + backbone.camera_embed + backbone.frame_embed[:T]).flatten(1, 3)
    sequence = torch.cat([images, text["text"]], dim=1)
    mask = torch.cat([torch.ones(B, images.shape[1], dtype=torch.long), text["text_mask"].long()], dim=1)
    with torch.no_grad():
        hidden = lm(inputs_embeds=sequence, attention_mask=mask, output_hidden_states=True).hidden_states[2]
        expected = backbone.proj(lm.norm(hidden))
    torch.testing.assert_close(prefix.tokens[:, : expected.shape[1]], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_modes_train_what_they_say(tiny_vlms, family):
    counts = {}
    for mode in ("frozen", "lora", "full"):
        backbone = build(tiny_vlms, family, finetune=mode)
        lm_trainable = [n for n, p in backbone.lm.named_parameters() if p.requires_grad]
        counts[mode] = len(lm_trainable)
        if mode == "lora":
            assert lm_trainable and all("lora_" in n for n in lm_trainable)
        frames, text, state = inputs(backbone)
        backbone(frames, text, state).tokens.square().mean().backward()
        grads = [p.grad for p in backbone.lm.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert all(p.grad is None for p in backbone.vision.parameters())  # the vision tower stays frozen
        assert ("lm" in backbone.frozen_modules()) == (mode == "frozen")
    assert counts["frozen"] == 0 < counts["lora"] < counts["full"]


def test_gradient_checkpointing_gives_the_same_gradients(tiny_vlms):
    grads, counts = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        backbone = build(tiny_vlms, "idefics3", finetune="lora", gradient_checkpointing=checkpointing)
        backbone.train()
        for name, p in backbone.lm.named_parameters():  # LoRA's B starts at zero: give it something to pass on
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        saved = []  # tensors autograd keeps for backward: checkpointed layers keep only their inputs
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
            tokens = backbone(*inputs(backbone)).tokens
        tokens.square().mean().backward()
        counts.append(len(saved))
        grads.append({n: p.grad.clone() for n, p in backbone.lm.named_parameters() if p.requires_grad})
    assert counts[1] < counts[0] / 2, counts
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_bfloat16_weights_give_a_float32_prefix(tiny_vlms):
    backbone = build(tiny_vlms, "idefics3", dtype="bfloat16")
    assert backbone.embed.weight.dtype == torch.bfloat16 and backbone.lm.norm.weight.dtype == torch.bfloat16
    prefix = backbone(*inputs(backbone))
    assert prefix.tokens.dtype == torch.float32 and torch.isfinite(prefix.tokens).all()


def test_frozen_features_are_cacheable_and_independent_of_the_batch(tiny_vlms):
    backbone = build(tiny_vlms, "paligemma")
    assert backbone.frozen  # frozen vision tower and embeddings: the feature cache applies
    images = {c: torch.rand(4, 3, 64, 64) for c in backbone.config.cameras}
    images["wrist"][1] = 0.0  # an all-black frame is a frame, not padding
    with torch.no_grad():
        full = backbone.encode_frames(images)["vision"]
        one = backbone.encode_frames({c: x[1:2] for c, x in images.items()})["vision"]
    assert full.shape == (4, 2, backbone.tokens_per_image, backbone.lm_dim)
    torch.testing.assert_close(full[1:2], one, rtol=1e-4, atol=1e-5)
    assert backbone.future_grid(2) == (2, 2, 2)  # 16 tokens per image: a 4 x 4 grid pooled 2 x 2


@pytest.mark.parametrize("settings, message", [
    (dict(finetune="adapter"), "backbone.finetune"),
    (dict(hidden_layer=9), "backbone.hidden_layer must be in 1..4"),
    (dict(dtype="float8"), "backbone.dtype"),
])
def test_bad_settings_are_config_errors(tiny_vlms, settings, message):
    with pytest.raises(ConfigError, match=message):
        build(tiny_vlms, "idefics3", **settings)


def test_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="needs backbone.model"):
        make_backbone(BackboneConfig(name="vlm"), width=48, n_obs_steps=1, state_dim=11)
    with pytest.raises(ConfigError, match="cannot load the VLM"):
        make_backbone(BackboneConfig(name="vlm", model=str(tmp_path / "nowhere")), width=48, n_obs_steps=1,
                      state_dim=11)


def test_cli_trains_and_evaluates_dita_on_a_vlm(tiny_vlms, lift_dataset, tmp_path, capsys):
    """`vla train` / `vla eval` with policy.backbone.name=vlm: cached frozen features, a checkpoint
    that rebuilds the VLM from its directory, a rollout."""
    import json

    from tests.conftest import TINY
    from vla.cli import main

    out = tmp_path / "run"
    vlm = ["policy.backbone.name=vlm", f"policy.backbone.model={tiny_vlms['idefics3']}",
           "policy.backbone.hidden_layer=2", "policy.backbone.finetune=lora", "policy.backbone.lora_rank=4"]
    assert main(["train", f"dataset.root={lift_dataset}", f"output_dir={out}", "train.steps=2", *TINY, *vlm]) == 0
    assert main(["eval", f"output_dir={out}", "eval.episodes=1", "eval.n_envs=1", "eval.max_videos=0",
                 "env.max_episode_steps=3", f"eval.output_dir={tmp_path / 'eval'}"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["episodes"] == 1
    config = json.loads((out / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())
    assert config["config"]["backbone"]["finetune"] == "lora"


def test_qwen_patches_are_its_image_processors(tiny_vlms):
    """Qwen2.5-VL's tower reads flattened patches in its processor's order: the same numbers."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    from vla.backbone.vlm import qwen_patches

    backbone = build(tiny_vlms, "qwen2_5_vl", image_size=90)
    # 90 px rounds up to 96, a whole number of merged 16-px units: 12 x 12 patches of 8 px, merged 2 x 2 -> 36 tokens
    assert backbone.image_size == 96 and backbone.tokens_per_image == 36
    vision = backbone.vision.encoder.config
    x = torch.rand(2, 3, 32, 32)
    processor = Qwen2VLImageProcessor(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                      temporal_patch_size=vision.temporal_patch_size, do_resize=False,
                                      do_rescale=False, do_normalize=False)
    expected = processor(images=list(x.numpy()), return_tensors="pt", input_data_format="channels_first")
    patches, grid = qwen_patches(x, vision)
    torch.testing.assert_close(patches, expected["pixel_values"].float())
    assert torch.equal(grid, expected["image_grid_thw"])


def test_omnijarvis_grows_the_paired_lms_own_vocabulary(tiny_vlms):
    """The behavior-token VLA on a VLM backbone whose LM is a real transformers causal LM: its
    behavior tokens are added to that LM's own tokenizer, and every original token keeps its id."""
    from transformers import AutoTokenizer

    from policies.omnijarvis.config import OmniJarvisConfig
    from policies.omnijarvis.lm import behavior_token
    from vla.policy import make_policy

    cfg = OmniJarvisConfig(state_dim=11, action_dim=7, horizon=4, n_action_steps=2, chunk_length=4, stage="vla",
                           width=32, heads=2, encoder_depth=1, decoder_depth=1)
    cfg.backbone.name, cfg.backbone.model, cfg.backbone.vision_model = "vlm", tiny_vlms["llama"], tiny_vlms["siglip"]
    cfg.backbone.hidden_layer = 2
    cfg.lm.kind, cfg.lm.path = "transformers", tiny_vlms["llama"]
    vla = make_policy(cfg).vla
    original = AutoTokenizer.from_pretrained(tiny_vlms["llama"])
    assert vla.vocab.base_size == len(original)
    assert vla.vocab.size == len(original) + sum(cfg.fsq_levels)
    assert vla.tokenizer.convert_tokens_to_ids(behavior_token(0, 0)) >= len(original)
    assert vla.tokenizer("lift the red cube")["input_ids"] == original("lift the red cube")["input_ids"]


@pytest.mark.parametrize("policy_name", ["dita", "dust"])
def test_the_vlm_runs_once_per_action_chunk(tiny_vlms, policy_name):
    """However many denoising steps a chunk takes, the VLM (vision tower and LM) runs once: the
    policy reuses the prefix (Dita: its KV cache) across steps."""
    from tests.test_policy_contract import raw_batch, tiny_config
    from vla.policy import make_policy

    cfg = tiny_config(policy_name, "vlm:idefics3", tiny_vlms)
    policy = make_policy(cfg).eval()
    calls = {"lm": 0, "vision": 0}
    policy.backbone.lm.register_forward_hook(lambda *_: calls.__setitem__("lm", calls["lm"] + 1))
    policy.backbone.vision.register_forward_hook(lambda *_: calls.__setitem__("vision", calls["vision"] + 1))
    with torch.no_grad():
        actions = policy.sample_actions(raw_batch(cfg, with_actions=False))
    assert actions.shape[1] == cfg.horizon
    assert calls == {"lm": 1, "vision": 1}
