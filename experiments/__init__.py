"""Thin entry points (Hydra and demos). The logic lives in the gaflax library."""
