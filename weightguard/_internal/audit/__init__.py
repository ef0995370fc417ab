"""Audit log internals: records and chain, sinks, signed checkpoints and anchors, verification."""
