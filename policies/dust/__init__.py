"""DUST: dual-stream flow matching with a world-model stream (Won et al., 2025)."""

from vla.policy_config import register_policy

register_policy("dust", "policies.dust.config:DustConfig", "policies.dust.model:DustPolicy")
