"""Every CLI path end to end on tiny settings, and the one-line errors for bad input."""

import json
import shutil

import pytest

from vla.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_collect_appends_to_an_existing_dataset(lift_dataset, tmp_path, capsys):
    """Two worker processes (collect.n_envs=2) append two episodes after the fixture's two, with
    DART noise and the expert's injected wrong grasps."""
    root = tmp_path / "lift"
    shutil.copytree(lift_dataset, root)
    code, out, _ = run_cli(capsys, "collect", "collect.episodes=2", "collect.seed=50", f"dataset.root={root}",
                           "collect.action_noise=0.2", "collect.noise_dims=[0,1,2]", "collect.n_envs=2",
                           "collect.grasp_mistakes=0.5")
    assert code == 0 and "collected 2 episodes" in out
    from vla.data.source import open_dataset

    ds = open_dataset("local/lift", root=root)
    assert ds.meta.total_episodes == 4 and ds[len(ds) - 1]["episode_index"] == 3
    assert ds[0]["task"] == "lift the red cube"


def test_eval_writes_report_and_videos(trained_run, tmp_path, capsys):
    out_dir = tmp_path / "eval"
    code, out, _ = run_cli(capsys, "eval", f"eval.checkpoint={trained_run}", "eval.episodes=2", "eval.n_envs=2",
                           "eval.max_videos=1", "env.max_episode_steps=12", f"eval.output_dir={out_dir}")
    assert code == 0, out
    assert "success rate" in out and "95% CI" in out
    report = json.loads((out_dir / "report.json").read_text())
    assert report["episodes"] == 2 and {r["seed"] for r in report["episodes_detail"]} == {100000, 100001}
    assert all(r["length"] == 12 for r in report["episodes_detail"])  # an untrained policy fails and times out
    assert report["protocol"]["n_action_steps (replan every)"] == 4
    assert "lift" in report["per_task"]
    # The env's stages are reported: an untrained policy reaches none of them on 12 steps.
    assert report["stages_reached"] == {"grasped": 0.0, "lifted": 0.0, "success": 0.0}
    assert "stages reached: grasped 0%, lifted 0%, success 0%" in out
    assert "Success rate" in (out_dir / "report.md").read_text()
    assert "| lift | 0% | 0% | 0% |" in (out_dir / "report.md").read_text()
    videos = list((out_dir / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    import av

    with av.open(str(videos[0])) as container:  # the env's control rate: the video plays in real time
        assert container.streams.video[0].average_rate == 20


def test_report_gives_the_share_of_episodes_that_reached_each_stage(tmp_path):
    from vla.report import summarize, write_report

    def episode(task, succeeded, **stages):
        return {"task": task, "success": succeeded, "length": 10, **({"stages": stages} if stages else {})}

    records = [episode("stack", True, grasped=True, lifted=True, over_target=True, success=True),
               episode("stack", False, grasped=True, lifted=True, over_target=False, success=False),
               episode("stack", False, grasped=False, lifted=False, over_target=False, success=False),
               episode("lift", False, grasped=True, lifted=False, success=False),
               episode("other", False)]  # an env without stages
    result = summarize(records, {})
    assert result["per_task"]["stack"]["stages_reached"] == {"grasped": 2 / 3, "lifted": 2 / 3, "over_target": 1 / 3,
                                                             "success": 1 / 3}
    assert result["per_task"]["lift"]["stages_reached"] == {"grasped": 1.0, "lifted": 0.0, "success": 0.0}
    assert "stages_reached" not in result["per_task"]["other"]
    write_report(tmp_path, result)
    text = (tmp_path / "report.md").read_text()
    assert "| task | grasped | lifted | over_target | success |" in text  # success last, whatever the task order
    assert "| stack | 67% | 67% | 33% | 33% |" in text and "| lift | 100% | 0% | - | 0% |" in text


def test_print_config(capsys):
    code, out, _ = run_cli(capsys, "train", "--print-config", "policy=dita-base", "train.steps=7")
    assert code == 0 and "steps: 7" in out and "width: 768" in out


def test_keys_of_a_mapping_are_added_without_a_plus_and_settings_stay_strict():
    from vla.cli import compose
    from vla.errors import ConfigError

    run, _ = compose(["env.family=gym", "env.gym.images.view=render", "env.kwargs.g=9.0",
                      "robot.topics.cameras.top=/t"])
    assert run.env.gym.images == {"view": "render"} and run.env.kwargs == {"g": 9.0}
    assert run.robot.topics.cameras["top"] == "/t"
    run, _ = compose(["env=pusht", "env.gym.images.top=pixels"])  # a key the config already has is set
    assert run.env.gym.images == {"top": "pixels"}
    with pytest.raises(ConfigError, match="env.gym.imagez"):
        compose(["env.gym.imagez.view=render"])


def test_nan_in_a_batch_is_refused():
    import torch

    from vla.data.normalize import Normalizer
    from vla.errors import TrainingError
    from vla.data.normalize import normalize_batch

    stats = {"action": {"min": torch.zeros(2), "max": torch.ones(2), "mean": torch.zeros(2), "std": torch.ones(2)}}
    norm = Normalizer(stats, {"action": "min_max"})
    with pytest.raises(TrainingError, match="'action'"):
        normalize_batch({"action": torch.tensor([[0.5, float("nan")]])}, norm)


def test_every_recipe_composes_and_an_ablation_changes_only_what_it_says():
    from dataclasses import asdict

    from vla.cli import compose
    from vla.config import config_dir

    recipes = sorted(p.stem for p in (config_dir() / "recipe").glob("*.yaml"))
    assert {"dita-cpu", "dust-cpu", "omnijarvis-cpu", "omnijarvis-cpu-vla", "dita-flow-cpu"} <= set(recipes)
    for recipe in recipes:
        run, policy = compose([f"recipe={recipe}"])
        policy.validate()
    (base_run, base), (run, flow) = compose(["recipe=dita-cpu"]), compose(["recipe=dita-flow-cpu"])
    assert flow.noise.kind == "flow" and flow.noise.num_inference_steps == 4 and base.noise.kind == "diffusion"
    flow.noise = base.noise
    assert asdict(flow) == asdict(base) and asdict(run) == asdict(base_run)
    # the demo's recipe: dita-cpu's data and model for 14 minutes
    demo_run, demo = compose(["recipe=dita-demo"])
    assert (demo_run.train.max_seconds, demo_run.train.ema_decay) == (840, None)
    assert asdict(demo) == asdict(base) and asdict(demo_run.collect) == asdict(base_run.collect)
    # the stack recipe: dita-cpu's model on 200 demos with misaligned descents, for 20 minutes
    stack_run, stack = compose(["recipe=dita-stack"])
    assert asdict(stack) == asdict(base) and stack_run.train.max_seconds == 1200
    assert (stack_run.collect.episodes, stack_run.collect.align_mistakes) == (200, 0.5)
    assert stack_run.collect.action_noise == base_run.collect.action_noise  # dart-recovery's otherwise
    ema_run, _ = compose(["recipe=dita-ema-cpu"])
    assert ema_run.train.ema_decay == 0.999 and ema_run.train.max_seconds is None
