"""Test support code (fakes for what cannot run here; say why where used)."""
