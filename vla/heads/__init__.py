"""Noise processes for action heads: DDPM/DDIM diffusion and flow matching.

Every process follows the one time convention of :mod:`vla.heads.base`; the concrete processes
import the base, never the other way round, and load here only when asked for (diffusion
imports diffusers).
"""

from vla.errors import ConfigError
from vla.heads.config import NoiseProcessConfig

__all__ = ["NoiseProcess", "NoiseProcessConfig", "make_noise_process", "sinusoidal_embedding"]


def __getattr__(name: str):  # the processes need torch; the config does not
    if name in ("NoiseProcess", "sinusoidal_embedding"):
        from vla.heads import base

        return getattr(base, name)
    raise AttributeError(f"module 'vla.heads' has no attribute {name!r}")


def make_noise_process(cfg: NoiseProcessConfig) -> "NoiseProcess":  # noqa: F821
    """The process ``cfg.kind`` names: ``diffusion`` (diffusers' DDPM / DDIM) or ``flow``."""
    if cfg.kind == "diffusion":
        from vla.heads.diffusion import DiffusionProcess

        return DiffusionProcess(cfg)
    if cfg.kind == "flow":
        from vla.heads.flow import FlowMatchingProcess

        return FlowMatchingProcess(cfg)
    raise ConfigError(f"unknown noise process kind {cfg.kind!r}; expected 'diffusion' or 'flow'")
