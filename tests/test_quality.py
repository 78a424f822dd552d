"""benchmarks.quality: candidates trained on one budget, evaluated on the same seeds, kept in JSON."""

import json

import pytest

from benchmarks.quality import main


def test_a_tiny_comparison_fills_the_results_and_the_table(lift_dataset, tmp_path, capsys):
    results, markdown = tmp_path / "quality.json", tmp_path / "RESULTS.md"
    args = ["--task", "tiny", "--dataset", str(lift_dataset), "--repo-id", "local/lift", "--env", "env=lift",
            "env.max_episode_steps=5", "--candidates", "dita", "lerobot-act", "--budget-minutes", "0.05",
            "--episodes", "2", "--out", str(tmp_path / "runs"), "--results", str(results), "--markdown", str(markdown),
            "--threads", "1", "--max-busy-cpus", "inf",  # the suite's other work must not stall it
            "--vla-overrides", "policy.width=32", "policy.heads=2", "policy.depth=1"]
    main(args)
    runs = json.loads(results.read_text())["runs"]
    assert sorted(runs) == ["tiny/dita/seed0", "tiny/lerobot-act/seed0"]
    for r in runs.values():
        assert r["episodes"] == 2 and r["steps"] and r["train_seconds"] >= 3 and r["threads"] == 1
        assert r["features"] == ["observation.images.agentview", "observation.images.wrist", "observation.state"]
        assert "--candidates " + r["candidate"] in r["reproduce"]
        assert set(r["stages_reached"]) == {"grasped", "lifted", "success"}  # lift's stages, from the eval report
        assert 0 <= r["busy_cpus_before"] <= 64
    assert "train.max_seconds=3" in runs["tiny/dita/seed0"]["commands"][0]
    assert "--max-seconds 3" in runs["tiny/lerobot-act/seed0"]["commands"][0]
    table = markdown.read_text()
    assert runs["tiny/dita/seed0"]["vla_overrides"] == ["policy.width=32", "policy.heads=2", "policy.depth=1"]
    assert runs["tiny/lerobot-act/seed0"]["vla_overrides"] == []  # they reach vla's trainings only
    assert "### tiny" in table and "| lerobot-act | 1 |" in table
    assert "| dita `policy.width=32` `policy.heads=2` `policy.depth=1` | 1 |" in table
    assert "stages reached (pooled)" in table and "grasped 0%, lifted 0% |" in table  # 5 steps reach nothing
    capsys.readouterr()
    main(args)  # a second sitting skips what is done
    assert capsys.readouterr().out.count("done before") == 2


def test_the_busy_measure_sees_a_spinning_process():
    import subprocess
    import sys

    from benchmarks.common import busy_cpus

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_cpus(1.0) >= 0.6  # one core spinning (other work only adds to it)
    finally:
        spin.kill()
        spin.wait()


def test_a_training_waits_for_an_idle_machine_and_gives_up_with_one_line(capsys):
    from benchmarks.common import wait_until_idle

    # a lull (0.3) between busy readings does not count: three quiet readings in a row do
    readings = iter([1.8, 0.3, 1.2, 0.3, 0.4, 0.1])
    assert wait_until_idle(0.5, 60, "[lift/dita/seed0]", poll_s=0, measure=lambda: next(readings)) == 0.4
    out = capsys.readouterr().out
    assert out.count("waiting for an idle machine") == 2 and "1.2 of" in out
    with pytest.raises(SystemExit, match=r"\[lift/dita/seed0\]: 1.5 of .* CPUs stayed busy .* --max-busy-cpus inf"):
        wait_until_idle(0.5, 0, "[lift/dita/seed0]", poll_s=0, measure=lambda: 1.5)


def test_every_other_recipe_is_a_one_stage_candidate(tmp_path):
    """An ablation recipe (`defaults: [dita-cpu]` + one change) runs under its own name; the recipes
    that are stages of a named candidate do not appear twice."""
    from argparse import Namespace

    from benchmarks.quality import candidates, vla_train_commands

    names = candidates()
    assert "dita-flow-cpu" in names and "dita-cpu" not in names and "omnijarvis-cpu-vla" not in names
    args = Namespace(env=["env=lift"], dataset="data/lift", repo_id="local/lift", budget_minutes=20, vla_overrides=[])
    [(cmd, out)] = vla_train_commands(args, "dita-flow-cpu", tmp_path, 0)
    assert "recipe=dita-flow-cpu" in cmd and "train.max_seconds=1200" in cmd and out == tmp_path / "train"
    assert len(vla_train_commands(args, "omnijarvis", tmp_path, 0)) == 2


def test_a_finished_run_keeps_what_others_wrote_since_the_sitting_began(tmp_path):
    """Two sittings (or a hand edit) sharing one results file: each finished run is merged into
    the file as it is then, not into the copy read at start."""
    from benchmarks.quality import load_results, record_run, save_results

    path = tmp_path / "quality.json"
    save_results(path, {"runs": {"lift/dita/seed0": {"success_rate": 0.88}}})
    started_with = load_results(path)
    save_results(path, {"runs": {**started_with["runs"], "lift/dust/seed0": {"success_rate": 0.3}}})  # meanwhile
    merged = record_run(path, "lift/dita/seed1", {"success_rate": 0.84})
    assert sorted(merged["runs"]) == sorted(load_results(path)["runs"]) == [
        "lift/dita/seed0", "lift/dita/seed1", "lift/dust/seed0"]


def _report(wins: list[bool], first_seed: int = 100_000) -> dict:
    return {"episodes_detail": [{"seed": first_seed + i, "success": w} for i, w in enumerate(wins)]}


def test_paired_comparison_is_the_exact_mcnemar_test(tmp_path, capsys):
    from scipy.stats import binomtest

    from benchmarks.paired import main as paired

    # 50 episodes: both win 33, only A 11, only B 3, neither 3
    a = [True] * 33 + [True] * 11 + [False] * 3 + [False] * 3
    b = [True] * 33 + [False] * 11 + [True] * 3 + [False] * 3
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps(_report(a)))
    (tmp_path / "b.json").write_text(json.dumps(_report(b)))
    r = paired(([str(tmp_path / "a"), str(tmp_path / "b.json")]))
    assert (r["episodes"], r["only_a"], r["only_b"]) == (50, 11, 3)
    assert r["success_a"] == 44 / 50 and r["success_b"] == 36 / 50
    assert abs(r["p_value"] - binomtest(3, 14, 0.5).pvalue) < 1e-12
    assert "exact McNemar p = 0.057" in capsys.readouterr().out


def test_paired_comparison_uses_only_shared_seeds_and_refuses_disjoint_ones(tmp_path, capsys):
    import pytest

    from benchmarks.paired import main as paired
    from vla.report import paired_comparison

    r = paired_comparison(_report([True, True, False]), _report([False, True], first_seed=100_001))
    assert (r["episodes"], r["only_a"], r["only_b"], r["p_value"]) == (2, 1, 1, 1.0)
    (tmp_path / "a.json").write_text(json.dumps(_report([True])))
    (tmp_path / "b.json").write_text(json.dumps(_report([True], first_seed=5)))
    with pytest.raises(SystemExit) as e:
        paired([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert e.value.code == 2 and "share no episode seed" in capsys.readouterr().err


@pytest.mark.slow  # ~3 minutes: three collections, three trainings, six evaluations, each its own process
def test_a_tiny_generalist_comparison_runs_and_resumes(tmp_path, capsys):
    """benchmarks.generalist: a family of two tabletop tasks and one of Meta-World, each entry
    collected by its expert; two specialists and the generalist trained at equal total steps
    (2 per family) and evaluated on each of their entries as that embodiment."""
    import yaml

    from benchmarks.generalist import main as generalist
    from tests.conftest import TINY

    short = ["env.max_episode_steps=4", "env.image_size=32"]
    anyhow = ["collect.success_only=false"]  # 4 steps: the experts' demos are cut short
    plan = {"recipe": "dita-cpu", "steps_per_family": 2, "data_root": str(tmp_path / "data"), "episodes": 2,
            "eval_seed": 100000, "overrides": [*TINY, "train.save_every=2", "policy.backbone.max_text_tokens=16"],
            "families": {
                "tabletop": [{"name": "lift", "env": ["env=lift", *short], "collect": anyhow, "episodes": 1},
                             {"name": "place", "env": ["env=place", *short], "collect": anyhow, "episodes": 1}],
                "metaworld": [{"name": "reach", "env": ["env=metaworld", *short], "episodes": 1,
                               "collect": ["collect=expert", *anyhow],
                               "features": {"cameras": {"agentview": "observation.images.corner"}}}]}}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    results, markdown = tmp_path / "generalist.json", tmp_path / "RESULTS.md"
    args = ["--plan", str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "runs"), "--results", str(results),
            "--markdown", str(markdown), "--threads", "1", "--eval-envs", "1"]
    generalist(args)
    runs = json.loads(results.read_text())["runs"]
    assert {k: r["steps"] for k, r in runs.items() if k.startswith("train/")} == {
        "train/tabletop/seed0": 2, "train/metaworld/seed0": 2, "train/generalist/seed0": 4}
    assert sorted(k for k in runs if k.startswith("eval/")) == [
        "eval/generalist/lift/seed0", "eval/generalist/place/seed0", "eval/generalist/reach/seed0",
        "eval/metaworld/reach/seed0", "eval/tabletop/lift/seed0", "eval/tabletop/place/seed0"]
    assert all(r["episodes"] == 2 for k, r in runs.items() if k.startswith("eval/"))
    assert runs["eval/generalist/reach/seed0"]["per_task"] == {"reach-v3": {"successes": 0, "episodes": 2}}
    table = markdown.read_text()
    assert "| tabletop | lift | 0% [0%, 66%] (1 seed) | 0% [0%, 66%] (1 seed) | +0 |" in table
    assert "| **metaworld** | mean |  |  | **+0** |" in table
    capsys.readouterr()
    generalist(args)  # a second sitting finds everything done
    assert "[" not in capsys.readouterr().out


def test_the_gripper_probe_sorts_windows_by_what_the_demonstration_does():
    import torch

    from benchmarks.gripper_probe import tally, window_kind

    closed, opened = 1.0, -1.0
    assert window_kind(torch.tensor([opened, opened, closed])) == "grasp"
    assert window_kind(torch.tensor([closed, opened, opened])) == "release"
    assert window_kind(torch.tensor([closed, closed, closed])) == "steady"
    truth = torch.tensor([[1.0, 1.0, -1.0, -1.0],    # release
                          [1.0, 1.0, -1.0, -1.0],    # release
                          [-1.0, 1.0, 1.0, 1.0],     # grasp
                          [1.0, 1.0, 1.0, 1.0]])     # steady
    pred = torch.tensor([[0.9, 0.8, 0.7, 0.6],       # never opens: half the steps agree
                         [0.9, -0.8, -0.7, -0.6],    # opens one step early: 3 of 4 agree
                         [-1.0, -1.0, 1.0, 1.0],     # closes one step late
                         [1.0, 1.0, 1.0, -0.1]])
    t = tally(truth, pred)
    assert t["release"] == {"agree": [0.5, 0.75], "switch": [0.0, 1.0]}
    assert t["grasp"] == {"agree": [0.75], "switch": [1.0]}
    assert t["steady"] == {"agree": [0.75], "switch": []}


def test_the_gripper_probe_measures_a_checkpoint_on_its_data(trained_run, lift_dataset, tmp_path, capsys):
    from benchmarks import gripper_probe

    results = tmp_path / "probe.json"
    gripper_probe.main(["--dataset", str(lift_dataset), "--repo-id", "local/lift", "--checkpoints", str(trained_run),
                        "--batches", "2", "--batch-size", "8", "--results", str(results)])
    row = json.loads(results.read_text())[str(trained_run)]
    assert row["samples"] == 16 and sum(row[k]["windows"] for k in gripper_probe.KINDS) == 16
    for kind in gripper_probe.KINDS:
        assert row[kind]["windows"] == 0 or 0 <= row[kind]["sign_agreement"] <= 1
    assert "release windows where it opens" in capsys.readouterr().out
