"""Private implementation modules of weightguard; no stable API."""
