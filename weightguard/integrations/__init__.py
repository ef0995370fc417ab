"""Secure loading inside the frameworks that serve models (vLLM, transformers,
sentence-transformers, KServe).

Each integration is a module of its own, imported only by the framework that uses it, so
``import weightguard`` never imports a framework.
"""
