"""Shared backbone: (images, instruction, state) -> prefix tokens ``(B, N, D)`` for every policy.

The config imports nothing heavy; the modules (torch) load when first asked for, so a config
composes on a machine that only runs the robot side of a deployment.
"""

from vla.backbone.config import BackboneConfig

__all__ = ["Backbone", "BackboneConfig", "Prefix", "make_backbone"]


def __getattr__(name: str):
    if name in ("Backbone", "Prefix", "make_backbone"):
        from vla.backbone import base

        return getattr(base, name)
    raise AttributeError(f"module 'vla.backbone' has no attribute {name!r}")
