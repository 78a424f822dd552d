"""The commands the README, docs/ and the policies' READMEs show, read from those files (never
retyped here), so an example cannot rot: each composes into a valid config, and names a make
target or module that exists."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "policies").glob("*/README.md"))]
# What a doc writes where a user fills in their own value: a `...` argument, or `<what goes here>`.
PLACEHOLDER = re.compile(r"^(?:\.\.\.|<[^>]*>)$")


def doc_commands(path: Path) -> list[tuple[int, list[str]]]:
    """(line, argv) of every command in the file's ```bash blocks: continuation lines joined,
    comments dropped, quotes resolved as a shell would."""
    commands, fence, pending, start = [], None, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence != "bash":
            continue
        if not pending:
            start = number
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        # a `<what goes here>` placeholder is one argument, even with spaces in it
        argv, pending = shlex.split(re.sub(r"<[^<>]*>", "<placeholder>", pending), comments=True), ""
        if argv:
            commands.append((start, argv))
    return commands


def all_commands() -> list:
    return [pytest.param(argv, id=f"{path.relative_to(ROOT)}:{line}")
            for path in DOC_FILES for line, argv in doc_commands(path)]


def overrides_of(argv: list[str]) -> list[str]:
    """The Hydra overrides of a `vla` command (after its subcommand); a placeholder value is
    replaced by a string, which composing accepts wherever the doc puts one (a path, an id)."""
    out = []
    for arg in argv:
        if arg.startswith("-") or PLACEHOLDER.match(arg):
            continue
        key, eq, value = arg.partition("=")
        out.append(f"{key}=placeholder" if eq and PLACEHOLDER.match(value) else arg)
    return out


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_the_docs_show_commands_and_the_parser_reads_them_as_a_shell_does(tmp_path):
    assert len(all_commands()) >= 30
    doc = tmp_path / "doc.md"
    doc.write_text('text\n```\nvla not-bash\n```\n'
                   '```bash\nvla eval a=1 \\\n    "b=[\'x y\']" c=<your dir>  # note\n# only a comment\n```\n')
    assert doc_commands(doc) == [(6, ["vla", "eval", "a=1", "b=['x y']", "c=<placeholder>"])]


@pytest.mark.parametrize("argv", all_commands())
def test_every_documented_command_is_valid(argv):
    from vla.cli import COMMANDS, compose

    program = argv[0]
    if program == "make":
        assert set(argv[1:]) <= make_targets(), f"no such make target: {argv[1:]}"
        return
    if program == "python":
        assert argv[1] == "-m" and importlib.util.find_spec(argv[2]) is not None, f"no such module: {argv[2]}"
        return
    if program == "torchrun":  # torchrun <its flags> -m vla.cli <command> <overrides>
        argv = ["vla", *argv[argv.index("vla.cli") + 1:]]
    assert argv[0] == "vla", f"a documented command must be vla, make, python -m or torchrun: {argv}"
    assert argv[1] in COMMANDS, f"no such vla command: {argv[1]}"
    compose(overrides_of(argv[2:]))  # unknown keys, config groups or values raise ConfigError


# --------------------------------------------------------------------------- running them
# Appended to a documented command so it runs in seconds (a later Hydra override wins): the
# command's own keys, paths and groups are what is tested.
SHRINK = {
    "collect": ["collect.episodes=2", "collect.n_envs=1"],
    "train": ["train.steps=2", "train.batch_size=4", "train.warmup_steps=1", "train.num_workers=0",
              "train.save_every=1"],
    "eval": ["eval.episodes=1", "eval.n_envs=1", "eval.max_videos=1"],
}
# Commands a test here does not run, each with where the same command is exercised instead.
NOT_RUN = {
    "make demo": "the demo itself: run by hand, measured in docs/quality.md",
    "make test": "the test suite itself (.ci/run runs it)",
    "torchrun": "tests/test_train.py runs the trainer under torch.distributed.run",
    "vla twin": "a server until Ctrl-C: tests/test_robot_ros.py and test_deploy.py drive the twin",
    "vla deploy": "needs the twin or an arm: tests/test_deploy.py deploys to the twin over DDS and rosbridge",
    "vla serve": "a server until Ctrl-C: tests/test_serve.py serves a checkpoint and deploys through it",
    "envs.robot.rosbridge_server": "a server: tests/test_rosbridge_server.py",
    "vla convert": "needs a robosuite HDF5 file: tests/test_convert.py converts one through the same command",
    "env.id=Pendulum-v1": "needs a checkpoint trained for Pendulum's 1-D action",
    "dataset.repo_id=lerobot/pusht": "downloads lerobot/pusht: tests/test_feature_mapping.py trains on a dataset "
                                     "in its convention, written with lerobot's API, through the same overrides",
    "output_dir=outputs/pusht": "evaluates that run: tests/test_feature_mapping.py evaluates its run in env=pusht",
    "output_dir=outputs/mix": "needs a Meta-World dataset: tests/test_mixture.py trains, evaluates and resumes a "
                              "two-dataset mixture through the same overrides",
}

RUN_HERE = ["README.md", "policies/dust/README.md", "policies/omnijarvis/README.md", "docs/envs.md"]


def not_run_reason(argv: list[str]) -> str | None:
    line = " ".join(argv)
    return next((why for pattern, why in NOT_RUN.items() if pattern in line), None)


def runnable(argv: list[str], checkpoints: dict[str, str]) -> list[str]:
    """The `vla` arguments to run for a documented command: placeholders filled (a LeRobot
    checkpoint where the doc asks for one), bare `...` dropped, SHRINK appended."""
    command, out = argv[1], []
    for arg in argv[2:]:
        key, eq, value = arg.partition("=")
        if PLACEHOLDER.match(arg):
            continue
        out.append(f"{key}={checkpoints[key]}" if eq and PLACEHOLDER.match(value) else arg)
    shrink = ["train.steps=3"] if "--resume" in out else SHRINK.get(command, [])
    return [command, *out, *shrink]


@pytest.fixture(scope="module")
def lerobot_checkpoint(lift_dataset, tmp_path_factory):
    """A LeRobot ACT trained 2 steps (what `eval.checkpoint=<a LeRobot pretrained_model/ ...>` needs)."""
    from benchmarks.lerobot_train import main as lerobot_train
    from tests.conftest import LEROBOT_FEATURES as FEATURES, TINY_ACT

    out = tmp_path_factory.mktemp("docs-lerobot") / "act"
    lerobot_train(["--policy", "act", "--dataset-root", str(lift_dataset), "--repo-id", "local/lift", "--output-dir",
                   str(out), "--features", *FEATURES, "--steps", "2", "--batch-size", "4", "--set", *TINY_ACT])
    return out / "pretrained_model"


def run_doc(path: Path, tmp_path, monkeypatch, checkpoints: dict[str, str], data: dict[str, Path] | None = None):
    """Run every command of one doc in order, in a fresh directory (its relative paths land
    there; `data` pre-places datasets the doc reads but does not record)."""
    from vla.cli import main

    monkeypatch.chdir(tmp_path)
    for name, source in (data or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(source)
    ran = []
    for line, argv in doc_commands(path):
        if not_run_reason(argv):
            continue
        args = runnable(argv, checkpoints)
        assert main(args) == 0, f"{path.name}:{line} failed: vla {' '.join(args)}"
        ran.append(line)
    return ran


@pytest.mark.slow  # ~3 minutes: simulator start-ups dominate
def test_the_readme_commands_run(lift_dataset, lerobot_checkpoint, tmp_path, monkeypatch):
    ran = run_doc(ROOT / "README.md", tmp_path, monkeypatch, {"eval.checkpoint": str(lerobot_checkpoint)})
    assert len(ran) >= 6  # collect, train, resume, eval, eval a LeRobot checkpoint, train a recipe
    assert (tmp_path / "data/lift/meta/info.json").exists()
    assert (tmp_path / "outputs/lift/checkpoints/000003").exists()  # trained 2 steps, resumed to 3


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUN_HERE[1:])
def test_the_commands_of_the_other_docs_run(doc, lift_dataset, tmp_path, monkeypatch):
    data = {"data/lift": lift_dataset, "data/videos": lift_dataset}  # DUST's action-free step reads videos only
    assert run_doc(ROOT / doc, tmp_path, monkeypatch, {}, data if doc.startswith("policies") else None)


def test_every_command_is_run_here_or_says_where_it_is_run():
    for path in DOC_FILES:
        for line, argv in doc_commands(path):
            runs_here = str(path.relative_to(ROOT)) in RUN_HERE and argv[0] == "vla"
            where = f"{path.relative_to(ROOT)}:{line}"
            assert runs_here or not_run_reason(argv), f"{where} is neither run nor excused: {argv}"
