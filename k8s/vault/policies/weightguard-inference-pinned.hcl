# weightguard inference, context pinned: unwrap with ONE model's key AND ONE derivation
# context (apply.sh --pin-context). Use when a Transit key is shared by several models
# (isolation by context alone), or as defence in depth with one key per model.
#
# Placeholders (rendered by k8s/vault/apply.sh):
#   @TRANSIT@      Transit mount
#   @MODEL_KEY@    the model's Transit key
#   @CONTEXT_B64@  base64 of the model's derivation context (what weightguard sends)
#   @AUDIT_KEY@    the ed25519 audit checkpoint key
#
# allowed_parameters pins "context" to exactly that value and, by omission, forbids
# batch_input (whose per-item contexts a policy cannot check) and every other parameter.
# OpenBao and Vault enforce this (tests/test_k8s_e2e.py runs it against a real OpenBao).
# Clients must then send one single-item decrypt per wrapped key.
path "@TRANSIT@/decrypt/@MODEL_KEY@" {
  capabilities = ["update"]
  allowed_parameters = {
    "ciphertext" = []
    "context"    = ["@CONTEXT_B64@"]
  }
}

# Sign audit checkpoints with the ed25519 audit key (WEIGHTGUARD_AUDIT_SIGNING_KEY): the
# pod's audit log is then provable, not only self-consistent. Signing only; the key
# never leaves Transit.
path "@TRANSIT@/sign/@AUDIT_KEY@" {
  capabilities = ["update"]
}
