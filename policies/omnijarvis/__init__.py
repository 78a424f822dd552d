"""OmniJARVIS-style behavior tokens: a trajectory tokenizer (FSQ), a code-conditioned policy
decoder, and an autoregressive VLA that emits thoughts and behavior tokens."""

from vla.policy_config import register_policy

register_policy("omnijarvis", "policies.omnijarvis.config:OmniJarvisConfig",
                "policies.omnijarvis.model:OmniJarvisPolicy")
