"""Artifact operations behind :mod:`weightguard.crypt`: encrypt, decrypt, rewrap, inspect."""
