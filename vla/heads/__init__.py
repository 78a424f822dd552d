"""Noise processes for action heads: DDPM/DDIM diffusion and flow matching.

Every process follows the one time convention of :mod:`vla.heads.base`.
"""

from vla.heads.base import NoiseProcess, NoiseProcessConfig, make_noise_process, sinusoidal_embedding

__all__ = ["NoiseProcess", "NoiseProcessConfig", "make_noise_process", "sinusoidal_embedding"]
