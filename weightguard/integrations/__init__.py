"""Secure loading where models are served: transformers, sentence-transformers, KServe."""
