"""benchmarks.quality: candidates trained on one budget, evaluated on the same seeds, kept in JSON."""

import json

from benchmarks.quality import main


def test_a_tiny_comparison_fills_the_results_and_the_table(lift_dataset, tmp_path, capsys):
    results, markdown = tmp_path / "quality.json", tmp_path / "RESULTS.md"
    args = ["--task", "tiny", "--dataset", str(lift_dataset), "--repo-id", "local/lift", "--env", "env=lift",
            "env.max_episode_steps=5", "--candidates", "dita", "lerobot-act", "--budget-minutes", "0.05",
            "--episodes", "2", "--out", str(tmp_path / "runs"), "--results", str(results), "--markdown", str(markdown),
            "--threads", "1", "--vla-overrides", "policy.width=32", "policy.heads=2", "policy.depth=1"]
    main(args)
    runs = json.loads(results.read_text())["runs"]
    assert sorted(runs) == ["tiny/dita/seed0", "tiny/lerobot-act/seed0"]
    for r in runs.values():
        assert r["episodes"] == 2 and r["steps"] and r["train_seconds"] >= 3 and r["threads"] == 1
        assert r["features"] == ["observation.images.agentview", "observation.images.wrist", "observation.state"]
        assert "--candidates " + r["candidate"] in r["reproduce"]
        assert set(r["stages_reached"]) == {"grasped", "lifted", "success"}  # lift's stages, from the eval report
    assert "train.max_seconds=3" in runs["tiny/dita/seed0"]["commands"][0]
    assert "--max-seconds 3" in runs["tiny/lerobot-act/seed0"]["commands"][0]
    table = markdown.read_text()
    assert "### tiny" in table and "| dita | 1 |" in table and "| lerobot-act | 1 |" in table
    assert "stages reached (pooled)" in table and "grasped 0%, lifted 0% |" in table  # 5 steps reach nothing
    capsys.readouterr()
    main(args)  # a second sitting skips what is done
    assert capsys.readouterr().out.count("done before") == 2


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
