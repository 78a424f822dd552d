"""OmniJARVIS behavior tokens: FSQ, the extended vocabulary, constrained decoding, the loss
mask, re-planning, annotation data, and both training stages through the CLI."""

import numpy as np
import pytest
import torch

from policies.omnijarvis.config import OmniJarvisConfig
from policies.omnijarvis.fsq import FSQ
from policies.omnijarvis.model import memory_text
from vla.backbone import Prefix
from vla.features import PHASE
from vla.policy import make_policy

# Tiny stage-2 settings for the CLI (stage 1 uses the same with policy.stage left at tokenizer).
TINY_OJ = ["policy=omnijarvis-small", "policy.width=32", "policy.heads=2", "policy.chunk_length=4",
           "policy.horizon=4", "policy.n_action_steps=2", "policy.encoder_depth=1", "policy.decoder_depth=1",
           "policy.lm.width=32", "policy.lm.depth=1", "policy.lm.heads=2", "policy.backbone.image_size=64",
           "policy.backbone.vision_grid=2", "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1",
           "train.num_workers=0"]


def test_fsq_round_trip_and_codebook_size():
    fsq = FSQ([8, 8, 8, 6, 5])
    assert fsq.codebook_size == 15_360
    codes = fsq(torch.randn(4096, 5) * 3)
    assert codes.abs().max() <= 1
    idx = fsq.codes_to_indices(codes)
    assert idx.min() >= 0 and idx.max() < fsq.codebook_size
    torch.testing.assert_close(fsq.indices_to_codes(idx), codes)
    every = torch.arange(fsq.codebook_size)
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(every)), every)  # a bijection
    digits = fsq.codes_to_digits(codes)
    assert ((digits >= 0) & (digits < fsq.levels)).all()


def test_fsq_reaches_every_level_and_passes_gradients_straight_through():
    fsq = FSQ([5, 4])
    z = torch.linspace(-6, 6, 2001)[:, None].repeat(1, 2).requires_grad_()
    codes = fsq(z)
    assert [len(codes[:, d].unique()) for d in range(2)] == [5, 4]
    codes.sum().backward()
    assert (z.grad[1000] > 0).all()  # not zero through the rounding


@pytest.mark.parametrize("kind", ["renorm", "batch"])
def test_latent_norm_keeps_windows_apart_where_plain_fsq_collapses(kind):
    """Latents with a large shared offset (what a decoder that ignores the code drifts to)
    saturate plain FSQ into one code; the normalization keeps them spread (the running
    statistics once they have followed the drift for a few dozen training batches)."""
    from policies.omnijarvis.tokenizer import BehaviorTokenizer

    torch.manual_seed(0)
    cfg = OmniJarvisConfig(width=32, heads=2, chunk_length=4, latent_norm=kind)
    tok = BehaviorTokenizer(cfg).train()

    def drifted():
        return torch.randn(256, 1, 5) * 0.05 + 6.0

    z = drifted()
    assert tok.fsq.codes_to_indices(tok.fsq(z)).unique().numel() == 1
    for _ in range(50):
        tok.latent_norm(drifted().flatten(0, 1))
    normed = tok.latent_norm(z.flatten(0, 1)).view_as(z)
    assert tok.fsq.codes_to_indices(tok.fsq(normed)).unique().numel() > 50
    tok.eval()  # stage 2 / acting: the same statistics, the same codes
    assert tok.fsq.codes_to_indices(tok.fsq(tok.latent_norm(z.flatten(0, 1)).view_as(z))).unique().numel() > 50


def test_renorm_codes_with_running_statistics_but_has_batch_norms_gradient():
    """latent_norm=renorm: the value is the running-statistics normalization (what stage 2 and
    acting use), the gradient BatchNorm's, which has no component along a latent dimension's
    batch mean or spread (that is what keeps the encoder from collapsing its codes). In eval
    mode it is BatchNorm, with the same buffers, so a latent_norm=batch run loads into it."""
    from policies.omnijarvis.tokenizer import BatchRenorm

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(5, affine=False).train()
    for _ in range(20):
        bn(torch.randn(32, 5) * 3 + 2)
    renorm = BatchRenorm(5)
    renorm.load_state_dict(bn.state_dict())
    x = (torch.randn(16, 5) * 2 + 1).requires_grad_()
    expected = bn.eval()(x).detach()
    y = renorm.train()(x)
    torch.testing.assert_close(y, expected)  # training value = running statistics, not the batch's
    assert renorm.num_batches_tracked.item() == bn.num_batches_tracked.item() + 1  # ... updated afterwards
    (y * torch.randn_like(y)).sum().backward()
    centred = x.detach() - x.detach().mean(0)
    torch.testing.assert_close(x.grad.sum(0), torch.zeros(5), atol=1e-5, rtol=0)  # no push on the mean
    torch.testing.assert_close((x.grad * centred).sum(0), torch.zeros(5), atol=1e-5, rtol=0)  # nor on the spread
    renorm.load_state_dict(bn.state_dict())
    torch.testing.assert_close(renorm.eval()(x), bn(x))


def test_stage_two_keeps_the_tokenizer_statistics_frozen(vla_policy):
    vla_policy.train()
    try:
        assert not vla_policy.behavior_tokenizer.latent_norm.training and not vla_policy.decoder.training
        assert vla_policy.vla.training
    finally:
        vla_policy.eval()


@pytest.fixture(scope="module")
def vla_policy():
    torch.manual_seed(0)
    cfg = OmniJarvisConfig(state_dim=11, action_dim=7, horizon=4, n_action_steps=2, chunk_length=4, stage="vla",
                           width=32, heads=2, encoder_depth=1, decoder_depth=1, temperature=1.0)
    cfg.lm.width, cfg.lm.depth, cfg.lm.heads = 32, 1, 2
    cfg.backbone.image_size, cfg.backbone.vision_grid = 64, 2
    policy = make_policy(cfg).eval()
    policy.tokenizer_trained.fill_(True)
    return policy


def random_prefix(b, n=6, width=32):
    return Prefix(torch.randn(b, n, width), torch.ones(b, n, dtype=torch.bool))


def test_constrained_decoding_only_emits_valid_tokens(vla_policy):
    vla, levels = vla_policy.vla, vla_policy.config.fsq_levels
    torch.manual_seed(1)
    b = 64  # untrained LM, sampled at temperature 1: anything unconstrained would show up
    out = vla.generate(["lift the red cube"] * b, [""] * b, random_prefix(b))
    k, d = vla.n_behavior, len(levels)
    for row, _thought in zip(out.tokens, out.thoughts):
        row = row[row >= 0]
        n = len(row) - k
        assert 0 <= n <= vla.max_thought and len(row) == n + k
        assert vla.vocab.text_mask[row[:n]].all(), "thought tokens come from the text vocabulary"
        for pos, tok in enumerate(row[n:].tolist()):
            assert tok in vla.vocab.ids[pos % d].tolist(), f"behavior position {pos} emitted a foreign token"
    assert ((out.digits >= 0) & (out.digits < torch.tensor(levels))).all()
    assert any(out.thoughts), "sampling at temperature 1 produces some thought text"


def test_without_thoughts_the_first_token_is_a_behavior(vla_policy):
    vla = vla_policy.vla
    vla.max_thought = 0  # what thoughts=False sets
    try:
        out = vla.generate(["lift the red cube"] * 8, [""] * 8, random_prefix(8))
    finally:
        vla.max_thought = vla_policy.config.max_thought_tokens
    assert (out.tokens >= 0).sum(1).eq(vla.n_behavior).all() and out.thoughts == [""] * 8


def test_loss_mask_covers_exactly_the_thought_and_behavior_tokens(vla_policy):
    vla, tok = vla_policy.vla, vla_policy.vla.tokenizer
    thoughts = ["grasp the red cube", "lift"]
    digits = torch.tensor([[[1, 2, 3, 4, 0]], [[7, 7, 7, 5, 4]]])
    seq = vla.training_sequence(["lift the red cube"] * 2, ["reach the red cube", ""], random_prefix(2), thoughts,
                                digits)
    assert (seq.labels[:, : vla.prompt_length(6)] == -100).all(), "no loss on instruction, memory or observation"
    for i, thought in enumerate(thoughts):
        supervised = seq.labels[i][seq.labels[i] != -100]
        words = tok(thought, add_special_tokens=False)["input_ids"]
        assert supervised[: len(words)].tolist() == words
        assert supervised[len(words):].tolist() == vla.vocab.token_ids(digits[i]).flatten().tolist()
        assert seq.is_behavior[i].sum() == vla.n_behavior
    assert seq.key_mask[seq.labels != -100].all()


def test_extending_the_vocabulary_keeps_original_ids():
    from policies.omnijarvis.config import LMConfig
    from policies.omnijarvis.lm import BehaviorVocab, load_tokenizer

    tok = load_tokenizer(LMConfig())
    before = {w: tok.convert_tokens_to_ids(w) for w in ["red", "cube", "[SEP]", "##s"]}
    vocab = BehaviorVocab(tok, [8, 8, 8, 6, 5])
    assert {w: tok.convert_tokens_to_ids(w) for w in before} == before
    assert vocab.size == vocab.base_size + 35
    ids = torch.cat(vocab.ids)
    assert sorted(ids.tolist()) == list(range(vocab.base_size, vocab.size))
    assert tok.decode(ids[:3], skip_special_tokens=True) == ""  # never leaks into a thought


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A randomly initialised LlamaForCausalLM saved with MiniLM's tokenizer: a real
    transformers causal LM in a local directory, offline."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from policies.omnijarvis.config import LMConfig
    from policies.omnijarvis.lm import load_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = load_tokenizer(LMConfig())
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=True)
                     ).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_transformers_lm_keeps_its_embeddings_trains_and_generates(tiny_llama):
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_llama).get_input_embeddings().weight.detach()
    cfg = OmniJarvisConfig(state_dim=11, action_dim=7, horizon=4, n_action_steps=2, chunk_length=4, stage="vla",
                           width=32, heads=2, encoder_depth=1, decoder_depth=1)
    cfg.lm.kind, cfg.lm.path = "transformers", str(tiny_llama)
    cfg.backbone.image_size, cfg.backbone.vision_grid = 64, 2
    vla = make_policy(cfg).vla
    grown = vla.lm.embed(torch.arange(len(original)))
    torch.testing.assert_close(grown, original)  # every original row, same id
    digits = torch.tensor([[[1, 2, 3, 4, 0]]])
    seq = vla.training_sequence(["lift the red cube"], [""], random_prefix(1), ["grasp the red cube"], digits)
    loss, _ = vla.loss(seq)
    loss.backward()
    assert torch.isfinite(loss) and vla.obs_proj[1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        out = vla.generate(["lift the red cube"], [""], random_prefix(1))
    assert (out.tokens >= 0).sum() >= vla.n_behavior


def test_a_tied_transformers_lm_saves_and_loads(tiny_llama, tmp_path):
    from vla.checkpoint import load_policy, save_pretrained
    from vla.data.normalize import Normalizer

    cfg = OmniJarvisConfig(state_dim=11, action_dim=7, horizon=4, n_action_steps=2, chunk_length=4, stage="vla",
                           width=32, heads=2, encoder_depth=1, decoder_depth=1)
    cfg.lm.kind, cfg.lm.path = "transformers", str(tiny_llama)
    cfg.backbone.image_size, cfg.backbone.vision_grid = 64, 2
    policy = make_policy(cfg)
    with torch.no_grad():
        policy.vla.lm.model.get_input_embeddings().weight[5] += 1.0  # tied: the output row moves too
    stats = {"action": {"min": torch.zeros(7), "max": torch.ones(7)}}
    save_pretrained(tmp_path / "ckpt", policy, Normalizer(stats, {"action": "min_max"}))
    loaded, _ = load_policy(str(tmp_path / "ckpt"))
    emb = loaded.vla.lm.model.get_input_embeddings().weight
    torch.testing.assert_close(emb, policy.vla.lm.model.get_input_embeddings().weight)
    assert emb.data_ptr() == loaded.vla.lm.model.get_output_embeddings().weight.data_ptr()


def test_kv_cached_generation_matches_a_full_forward(vla_policy):
    """Greedy tokens from prefill + step equal the argmax of one uncached pass over the result."""
    vla = vla_policy.vla
    vla.config.temperature = 0.0
    try:
        prefix = random_prefix(2)
        out = vla.generate(["lift the red cube", "stack the red cube on the green cube"], ["", "reach"], prefix)
    finally:
        vla.config.temperature = 1.0
    emb, mask = vla.prompt(["lift the red cube", "stack the red cube on the green cube"], ["", "reach"], prefix)
    for i in range(2):
        toks = out.tokens[i][out.tokens[i] >= 0]
        full = torch.cat([emb[i:i + 1], vla.lm.embed(toks[None])], 1)
        keys = torch.cat([mask[i:i + 1], torch.ones(1, len(toks), dtype=torch.bool)], 1)
        with torch.no_grad():
            logits = vla.lm.logits(vla.lm(full, keys))[0, vla.prompt_length(6) - 1: -1]
        allowed = torch.stack([vla.allowed(torch.tensor([min(max(0, p - (len(toks) - vla.n_behavior)), 99)]),
                                           torch.tensor([p]))[0] for p in range(len(toks))])
        assert torch.equal(logits.masked_fill(~allowed, float("-inf")).argmax(-1), toks)


def test_replans_every_n_steps_with_memory_and_starts_over_at_step_zero(vla_policy):
    policy, b = vla_policy, 2
    cfg = policy.config
    obs = {f"observation.images.{c}": torch.rand(b, 1, 3, 64, 64) for c in cfg.backbone.cameras}
    obs.update({"observation.state": torch.randn(b, 1, 11), "task": ["lift the red cube"] * b})
    starts = []
    for step in [[0, 0], [2, 2], [4, 3], [6, 6], [8, 0]]:
        obs["step"] = torch.tensor(step)
        assert policy.sample_actions(obs).shape == (b, cfg.horizon, 7)
        starts.append(policy._plans.start.tolist())
        assert len(policy.annotations()) == b
    # N = chunk_length = 4: env 0 re-plans at 4 and 8; env 1 at 6 (first call >= 4 steps after 0), then a new episode
    assert starts == [[0, 0], [0, 0], [4, 0], [4, 6], [8, 0]]
    assert len(policy._plans.memory[0]) == 2 and policy._plans.memory[1] == []


def test_memory_text_merges_repeats():
    assert memory_text(["reach", "reach", "grasp", ""]) == "reach; grasp"
    assert memory_text([]) == ""


def test_phase_annotations_arrive_at_their_offsets_on_both_data_paths(lift_dataset):
    from vla.config import DatasetConfig
    from vla.data.pipeline import TrainingData
    from vla.data.source import open_dataset

    cfg = OmniJarvisConfig(stage="vla", chunk_length=4, horizon=4, n_action_steps=2, replan_every=2, memory_size=2)
    ds = open_dataset(lift_dataset)
    phases = list(ds.hf_dataset.with_format(None)[PHASE])
    episode = list(ds.hf_dataset.with_format(None)["episode_index"])
    cached = TrainingData(DatasetConfig(root=str(lift_dataset)), cfg, seed=0, device=torch.device("cpu"),
                          num_workers=0, batch_size=8, progress=False)
    batch = cached._sampler.get(torch.tensor([0, 3, 10, len(phases) - 1]))
    assert batch["task"] == ["lift the red cube"] * 4
    for row, i in zip(range(4), [0, 3, 10, len(phases) - 1]):
        start = episode.index(episode[i])  # the episode's first frame
        want = [phases[max(i + o, start)] for o in (-4, -2, 0)]
        assert batch[PHASE][row] == want
        assert batch[f"{PHASE}_is_pad"][row].tolist() == [i - 4 < start, i - 2 < start, False]
    cfg.backbone.freeze_vision = False  # the raw path: LeRobot's DataLoader + a lookup by frame index
    raw = TrainingData(DatasetConfig(root=str(lift_dataset), cache_features=False), cfg, seed=0,
                       device=torch.device("cpu"), num_workers=0, batch_size=4, progress=False)
    rb = raw.next_batch()
    for row, i in enumerate(rb["index"].tolist()):
        assert rb[PHASE][row][-1] == phases[i]


def test_both_stages_train_through_the_cli_and_eval_shows_thoughts(lift_dataset, trained_run, tmp_path, capsys):
    from vla.cli import main

    data = [f"dataset.root={lift_dataset}", "env.image_size=64"]
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    assert main(["train", *data, f"output_dir={stage1}", "train.steps=3", *TINY_OJ]) == 0
    # stage 2 without the stage-1 weights is refused in one line
    assert main(["train", *data, f"output_dir={tmp_path / 'bad'}", "train.steps=2", "policy.stage=vla", *TINY_OJ]) == 2
    assert "train.init_from" in capsys.readouterr().err
    # a stage-1 checkpoint cannot act
    assert main(["eval", f"output_dir={stage1}", "env.image_size=64", "eval.episodes=1", "eval.n_envs=1"]) == 2
    assert "stage-1" in capsys.readouterr().err
    assert main(["train", *data, f"output_dir={stage2}", "train.steps=3", "policy.stage=vla",
                 f"train.init_from={stage1}", *TINY_OJ]) == 0
    assert "initialised" in capsys.readouterr().out
    assert main(["eval", f"output_dir={stage2}", "env.image_size=64", "eval.episodes=1", "eval.n_envs=1",
                 "env.max_episode_steps=6", f"eval.output_dir={tmp_path / 'eval'}"]) == 0
    videos = list((tmp_path / "eval" / "videos").glob("*.mp4"))
    assert videos
    import av

    with av.open(str(videos[0])) as f:
        frame = next(f.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.shape[0] > 64, "a caption band with the thought sits under the camera views"

    # the probe splits the decoder's error (own code) from the VLA's choice of code, next to Dita's
    from benchmarks import omnijarvis_probe

    probe = ["--dataset", str(lift_dataset), "--repo-id", "local/lift", "--batches", "1", "--batch-size", "4",
             "--results", str(tmp_path / "probe.json")]
    row = omnijarvis_probe.main([*probe, "--checkpoint", str(stage2), "--reference", str(trained_run)])
    assert all(np.isfinite(row[k]) and row[k] > 0 for k in ("own_code", "vla_code", "other_code"))
    assert 0 <= row["exact_code"] <= row["digit_accuracy"] <= 1 and row["samples"] == 4
    assert np.isfinite(row[f"reference {trained_run}"])
    with pytest.raises(SystemExit, match="not an OmniJARVIS stage-2"):
        omnijarvis_probe.main([*probe, "--checkpoint", str(stage1)])


def test_categorical_decoder_bins_actions_and_learns_a_chunk():
    from policies.omnijarvis.decoder import BehaviorDecoder

    torch.manual_seed(0)
    cfg = OmniJarvisConfig(state_dim=11, action_dim=3, horizon=4, chunk_length=4, width=32, heads=2,
                           decoder_depth=1, decoder_head="categorical", action_bins=16)
    dec = BehaviorDecoder(cfg, n_prefix=6)
    actions = torch.rand(2, 4, 3) * 2 - 1
    assert (dec.bin_center(dec.bin_of(actions)) - actions).abs().max() <= 1 / 16 + 1e-6  # within half a bin
    prefix, codes, step = random_prefix(2), torch.zeros(2, 1, 5), torch.tensor([0, 3])
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    for _ in range(150):
        loss = dec.loss(prefix, codes, step, actions, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = dec.sample(prefix, codes, step)
    assert pred.shape == (2, 4, 3) and (pred - actions).abs().max() <= 1 / 16 + 1e-6


def window_pool(n, seed=0):
    """``n`` stage-1 training windows of a tiny tokenizer-stage policy, with their frame and
    text features computed once (the cached-data layout), and a batch builder over them."""
    torch.manual_seed(seed)
    cfg = OmniJarvisConfig(state_dim=11, action_dim=7, horizon=4, n_action_steps=2, chunk_length=4, width=32, heads=2,
                           encoder_depth=1, decoder_depth=1)
    cfg.backbone.image_size, cfg.backbone.vision_grid = 64, 2
    policy = make_policy(cfg)
    offsets = cfg.frame_offsets()
    t, h = len(offsets["observation.state"]), len(offsets["action"])
    images = {k: torch.rand(n, t, 3, 64, 64) for k in cfg.image_keys()}
    with torch.no_grad():
        frames, text = policy.encode_observation({**images, "task": ["lift the red cube"] * n})
    pool = {"frames": frames, "text": text, "observation.state": torch.randn(n, t, 11),
            "action": torch.rand(n, h, 7) * 2 - 1, "action_is_pad": torch.zeros(n, h, dtype=torch.bool)}

    def batch(rows):
        rows = torch.as_tensor(rows)
        out = {k: ({kk: vv[rows] for kk, vv in v.items()} if isinstance(v, dict) else v[rows]) for k, v in pool.items()}
        return {**out, "task": ["lift the red cube"] * len(rows)}

    return policy, batch


def test_a_windows_code_does_not_depend_on_its_batch_companions(monkeypatch):
    """Stage 1 trains the decoder on the code of each window; that code must be a function of
    the window (and the trained weights), not of which other windows were drawn into the same
    batch, or the decoder learns from codes that stage 2 (frozen statistics) never produces."""
    policy, batch = window_pool(40)
    policy.train()
    for start in (16, 24, 32):  # some training batches first: the statistics are no longer their initial values
        policy.encode_behavior(batch(range(start, start + 8)))
    seen = []
    original = policy.decoder.loss

    def spy(prefix, codes, step, actions, is_pad, dim_is_pad=None):
        seen.append(codes.detach().clone())
        return original(prefix, codes, step, actions, is_pad, dim_is_pad)

    monkeypatch.setattr(policy.decoder, "loss", spy)
    shared = list(range(8))  # the same 8 windows, with 8 different companions in each batch
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    policy.compute_loss(batch(shared + list(range(8, 16))))
    policy.load_state_dict(state)  # the same weights and statistics for the second batch
    policy.compute_loss(batch(list(range(16, 40, 3)) + shared))
    fsq = policy.behavior_tokenizer.fsq
    first, second = fsq.codes_to_indices(seen[0][:8]), fsq.codes_to_indices(seen[-1][8:])
    changed = (first != second).sum().item()
    assert changed == 0, f"{changed} of 8 windows changed code with their batch companions"
    # ... and stage 2 / inference (eval mode, the same weights and statistics) see the very
    # code the decoder was trained on
    policy.load_state_dict(state)
    policy.eval()
    torch.testing.assert_close(policy._encode(*policy._window(batch(shared))), seen[0][:8])
