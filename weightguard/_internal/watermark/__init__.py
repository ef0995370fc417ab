"""Watermark scheme, detection, alignment, fingerprints and tensor sources."""
