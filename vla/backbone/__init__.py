"""Shared backbone: (images, instruction, state) -> prefix tokens ``(B, N, D)`` for every policy."""

from vla.backbone.base import Backbone, BackboneConfig, Prefix, make_backbone

__all__ = ["Backbone", "BackboneConfig", "Prefix", "make_backbone"]
