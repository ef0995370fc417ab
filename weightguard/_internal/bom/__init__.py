"""The CycloneDX ML-BOM behind :mod:`weightguard.bom` (cyclonedx-python-lib)."""
