# weightguard inference: unwrap the data keys of ONE model, nothing else.
#
# Rendered by k8s/vault/apply.sh per model (placeholders @...@):
#   @TRANSIT@      Transit mount (default "transit")
#   @MODEL_KEY@    the model's own Transit key (one key per model: wg-model-<model>)
#   @CONTEXT_B64@  base64 of the model's key-derivation context (the model id)
#
# Enforcement: the path restricts the key (one Transit key per model, so another model's
# wrapped keys cannot be opened); allowed_parameters pins the derivation context and
# forbids batch_input (whose per-item contexts a policy cannot inspect) and every other
# parameter. OpenBao/Vault enforce allowed_parameters on request parameters (tested in
# tests/test_k8s_e2e.py against a real OpenBao).
path "@TRANSIT@/decrypt/@MODEL_KEY@" {
  capabilities = ["update"]
  allowed_parameters = {
    "ciphertext" = []
    "context"    = ["@CONTEXT_B64@"]
  }
}
