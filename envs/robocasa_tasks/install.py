"""Whether RoboCasa and its kitchen assets are installed, and the one-line fix when not.

Kept apart from the package's ``__init__`` so the env module can import it without importing
its own package.
"""

from __future__ import annotations

from vla.errors import EnvError

INSTALL_HINT = (
    "RoboCasa is not installed (it is not on PyPI; it needs robosuite's master branch and ~10 GB of assets): "
    "git clone https://github.com/ARISE-Initiative/robosuite && pip install -e ./robosuite && "
    "git clone https://github.com/robocasa/robocasa && pip install -e ./robocasa && "
    "python -m robocasa.scripts.setup_macros && python -m robocasa.scripts.download_kitchen_assets"
)
ASSETS_HINT = "download them (~10 GB) with: python -m robocasa.scripts.download_kitchen_assets"


def require_robocasa():
    """``import robocasa`` (which registers its kitchens with robosuite) and check its kitchen
    assets; an EnvError with the fix when either is missing."""
    import envs.mujoco_render  # noqa: F401  (headless GL settings, before robosuite loads)

    try:
        import robocasa
    except ImportError as e:
        if (e.name or "").split(".")[0] == "robocasa":
            raise EnvError(INSTALL_HINT) from None
        raise EnvError(f"RoboCasa is installed but does not import ({type(e).__name__}: {e}); it needs robosuite's "
                       f"master branch: pip install -e <robosuite clone>") from None
    problem = kitchen_assets_problem(robocasa.__path__[0])
    if problem:
        raise EnvError(f"RoboCasa's kitchen assets are missing ({problem}); {ASSETS_HINT}")
    return robocasa


def kitchen_assets_problem(package_dir: str) -> str | None:
    """What is missing from an installed robocasa package's ``models/assets`` (None: nothing).
    download_kitchen_assets fills textures/ (nothing of it is in git), fixtures/ and at least one
    object registry (objects/objaverse, objects/lightwheel, objects/aigen_objs)."""
    from pathlib import Path

    assets = Path(package_dir) / "models" / "assets"

    def filled(path: Path) -> bool:
        return path.is_dir() and any(path.iterdir())

    for sub in ("textures", "fixtures"):
        if not filled(assets / sub):
            return f"no {assets / sub}"
    if not any(filled(assets / "objects" / reg) for reg in ("objaverse", "lightwheel", "aigen_objs")):
        return f"no object registry under {assets / 'objects'}"
    return None
