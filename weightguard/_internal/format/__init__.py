"""Encrypted artifact byte layout (docs/FORMAT.md) and the bounded plain safetensors parser."""
