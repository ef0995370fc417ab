# weightguard release (MLOps): wrap new data keys under the model keys, and sign.
# It can never decrypt: no transit/decrypt, no transit/rewrap, no key export or config.
#
# Rendered by k8s/vault/apply.sh (placeholders @...@):
#   @TRANSIT@       Transit mount (default "transit")
#   @AUDIT_KEY@     the ed25519 audit checkpoint key (default "weightguard-audit")
#   @MODEL_PREFIX@  prefix of the per-model Transit keys (default "wg-model-")
#   @SIGNING_KEY@   the non-exportable release signing key (default "wg-release-signing")

# Envelope encryption: weightguard generates a fresh 256-bit data key per artifact
# locally and wraps it under the model's key with the model's derivation context
# (batch_input: all shards in one round trip).
path "@TRANSIT@/encrypt/@MODEL_PREFIX@*" {
  capabilities = ["update"]
}

# Key metadata of the model keys (weightguard checks the key is derived=true).
path "@TRANSIT@/keys/@MODEL_PREFIX@*" {
  capabilities = ["read"]
}

# Sign the release bundle with the non-exportable signing key (any hash algorithm path).
path "@TRANSIT@/sign/@SIGNING_KEY@" {
  capabilities = ["update"]
}
path "@TRANSIT@/sign/@SIGNING_KEY@/*" {
  capabilities = ["update"]
}

# Its public key, to embed the verification material in the bundle.
path "@TRANSIT@/keys/@SIGNING_KEY@" {
  capabilities = ["read"]
}

# Sign audit checkpoints with the ed25519 audit key (WEIGHTGUARD_AUDIT_SIGNING_KEY): the
# pod's audit log is then provable, not only self-consistent. Signing only; the key
# never leaves Transit.
path "@TRANSIT@/sign/@AUDIT_KEY@" {
  capabilities = ["update"]
}
