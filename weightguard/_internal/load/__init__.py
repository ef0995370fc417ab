"""The secure loader's machinery: sources, planning, the one-pass pipeline, copiers, upload."""
