"""The boundaries of the house: no import cycles, errors importable from anywhere for free, and
commands that only read a config never load the dataset stack."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vla", "envs", "policies")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every first-party module -> the first-party modules it imports, at module level or inside
    a function (a lazy import that closes a cycle is still a cycle, only a later one)."""
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the submodule; `from pkg import name` the package
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
        graph[name] = {m for m in edges if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_between_first_party_modules():
    assert cycles(import_graph()) == []


def test_the_error_module_imports_nothing():
    tree = ast.parse((ROOT / "vla" / "errors.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _modules_loaded_by(argv: list[str]) -> tuple[int, str, set[str]]:
    """Run ``vla <argv>`` in a fresh interpreter; its exit code, stderr and the top-level
    packages it had imported when it returned."""
    code = ("import sys\nfrom vla.cli import main\nrc = main(sys.argv[1:])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules}), file=sys.stderr)\nsys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    *message, loaded = done.stderr.strip().splitlines()
    return done.returncode, "\n".join(message), set(ast.literal_eval(loaded))


def test_a_config_error_and_print_config_do_not_load_the_dataset_stack():
    rc, message, loaded = _modules_loaded_by(["train", "train.steps=abc"])
    assert rc == 2 and message.startswith("vla train: error:") and "train.steps" in message
    assert not loaded & {"lerobot", "transformers", "diffusers", "datasets", "robosuite", "mujoco"}
    rc, _, loaded = _modules_loaded_by(["twin", "--print-config"])
    assert rc == 0
    assert not loaded & {"lerobot", "transformers", "diffusers", "datasets", "robosuite", "mujoco"}


def test_a_policy_folder_registers_itself(tmp_path, monkeypatch):
    """Adding a policy touches only its own folder: a package under policies/ that registers
    itself in its __init__ is found by name, its model code unimported until built."""
    import policies
    import vla.policy_config as registry

    # discover the real policies first: a package registers itself when first imported, and that
    # must happen into the real registry, not the copy patched in below (else later tests lose them)
    registry.available_policies()
    package = tmp_path / "mirror_dita"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from vla.policy_config import register_policy\n"
        "register_policy('mirror_dita', 'policies.dita.config:DitaConfig', 'policies.dita.model:DitaPolicy')\n")
    monkeypatch.setattr(policies, "__path__", [*policies.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_discovered", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the real ones stay registered
    assert registry.available_policies() == ["dita", "dust", "mirror_dita", "omnijarvis"]
    assert registry.policy_config_class("mirror_dita").__name__ == "DitaConfig"
    folders = sorted(p.name for p in (ROOT / "policies").iterdir() if (p / "__init__.py").exists())
    assert folders == ["dita", "dust", "omnijarvis"]


def test_the_data_layer_names_no_simulator():
    """vla/data reads and writes datasets for any world: it imports no env family and no simulator
    (the robosuite HDF5 conversion lives with the robosuite family)."""
    graph = import_graph()
    for module in [m for m in graph if m.startswith("vla.data")]:
        assert not {m for m in graph[module] if m.startswith("envs")}, module
        tree = ast.parse((ROOT / (module.replace(".", "/") + ("/__init__.py" if module == "vla.data" else ".py")))
                         .read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {n for n in names if n.split(".")[0] in ("robosuite", "mujoco", "envs")}, module


def test_envs_are_built_through_the_registry_only():
    """The engine names no env family: vla/ reaches envs/ through envs.registry (worlds) and
    envs.robot (robot drivers) alone; the CLI also wires `vla convert` to the robosuite converter."""
    graph = import_graph()
    for module, imports in graph.items():
        if module.startswith("vla"):
            imports = imports - ({"envs.robosuite_tasks.convert"} if module == "vla.cli" else set())
            worlds = {m for m in imports if m.startswith("envs") and not m.startswith(("envs.registry", "envs.robot"))}
            assert not worlds, f"{module} imports {worlds}"
