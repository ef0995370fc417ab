"""The signing methods behind :mod:`weightguard.signing`, one module each."""
