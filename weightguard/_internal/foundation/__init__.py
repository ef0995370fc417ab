"""Area-independent building blocks: atomic writes, wiping, CPU counts, Vault clients."""
