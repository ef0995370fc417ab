"""Evidence for auditors behind :mod:`weightguard.report`: access statistics streamed from
verified audit logs, the SVG timeline, and the HTML / Markdown renderers."""
