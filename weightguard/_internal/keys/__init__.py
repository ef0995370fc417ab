"""Key providers that wrap and unwrap per-file data keys (Vault/OpenBao Transit, AWS KMS, file)."""
