# weightguard release (MLOps): create data keys for model keys and sign releases.
# It can never decrypt: no transit/decrypt, no transit/rewrap, no key export or config.
#
# Rendered by k8s/vault/apply.sh (placeholders @...@):
#   @TRANSIT@       Transit mount (default "transit")
#   @MODEL_PREFIX@  prefix of the per-model Transit keys (default "wg-model-")
#   @SIGNING_KEY@   the non-exportable release signing key (default "wg-release-signing")

# Envelope encryption: a fresh 256-bit data key per artifact, returned in plaintext (used
# in memory, then wiped) and wrapped under the model's key with its derivation context.
path "@TRANSIT@/datakey/plaintext/@MODEL_PREFIX@*" {
  capabilities = ["update"]
}

# Wrap a locally generated data key under the model's key.
path "@TRANSIT@/encrypt/@MODEL_PREFIX@*" {
  capabilities = ["update"]
}

# Key metadata (latest version) of the model keys, to record it in the artifact header.
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
