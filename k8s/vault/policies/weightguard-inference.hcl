# weightguard inference: unwrap the data keys of ONE model, nothing else.
#
# Rendered by k8s/vault/apply.sh per model (placeholders @...@):
#   @TRANSIT@      Transit mount (default "transit")
#   @AUDIT_KEY@    the ed25519 audit checkpoint key (default "weightguard-audit")
#   @MODEL_KEY@    the model's own Transit key (one key per model: wg-model-<model>)
#
# Enforcement: one derived Transit key per model, and this path names only that key, so
# the wrapped data keys of any other model cannot be opened. Only the decrypt parameters
# weightguard sends are accepted (batch_input: one round trip for all shards of the
# model). A Vault policy cannot inspect the per-item contexts inside batch_input; to pin
# the derivation context as well, use weightguard-inference-pinned.hcl
# (apply.sh --pin-context), which forbids batch_input.
path "@TRANSIT@/decrypt/@MODEL_KEY@" {
  capabilities = ["update"]
  allowed_parameters = {
    "batch_input" = []
    "ciphertext"  = []
    "context"     = []
  }
}

# Sign audit checkpoints with the ed25519 audit key (WEIGHTGUARD_AUDIT_SIGNING_KEY): the
# pod's audit log is then provable, not only self-consistent. Signing only; the key
# never leaves Transit.
path "@TRANSIT@/sign/@AUDIT_KEY@" {
  capabilities = ["update"]
}
