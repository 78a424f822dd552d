"""Dita: a causal transformer that denoises action chunks in context (Hou et al., 2025)."""

from vla.policy_config import register_policy

register_policy("dita", "policies.dita.config:DitaConfig", "policies.dita.model:DitaPolicy")
