"""DUST: dual-stream flow matching with a world-model stream (Won et al., 2025)."""
