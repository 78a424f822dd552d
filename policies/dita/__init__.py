"""Dita: a causal transformer that denoises action chunks in context (Hou et al., 2025)."""
