"""OmniJARVIS-style behavior tokens: a trajectory tokenizer (FSQ), a code-conditioned policy
decoder, and an autoregressive VLA that emits thoughts and behavior tokens."""
