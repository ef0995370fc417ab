#!/usr/bin/env bash
# Configure Vault/OpenBao for weightguard on Kubernetes (idempotent).
#
# Creates, for one model:
#   * the Transit mount (if missing) and the model's own Transit key "wg-model-<model>"
#     (aes256-gcm96, derived=true: every wrap/unwrap needs the model's derivation context,
#     non-exportable, deletion not allowed);
#   * the release signing key "wg-release-signing" (ecdsa-p256, non-exportable);
#   * policies rendered from k8s/vault/policies/*.hcl:
#       weightguard-inference-<model>  only transit/decrypt/<model key> (--pin-context:
#                                      and only the model's derivation context)
#       weightguard-release            only wrapping data keys under model keys + signing;
#   * auth roles bound to the service accounts and namespaces of the manifests:
#       kubernetes auth: roles "weightguard-inference" and "weightguard-release", bound to
#         (weightguard-inference, ml-inference) and (weightguard-release, ml-release),
#         audience "vault" (the projected token's audience);
#       jwt auth (the alternative, --auth jwt|both): roles of the same names, bound to the
#         token's subject system:serviceaccount:<ns>:<sa> and audience "vault".
#
# Needs an admin token in the environment: VAULT_ADDR + VAULT_TOKEN (or BAO_ADDR +
# BAO_TOKEN), and the `bao` or `vault` CLI on PATH (or VAULT_CLI=/path/to/cli).
#
# Usage: k8s/vault/apply.sh [options]      (k8s/vault/apply.sh --help)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

model="demo-llm"
context=""
transit="transit"
model_prefix="wg-model-"
signing_key="wg-release-signing"
audit_key="weightguard-audit"
auth="kubernetes"
k8s_mount="kubernetes"
jwt_mount="jwt"
k8s_host=""
k8s_ca_cert=""
reviewer_jwt_file=""
jwt_issuer=""
jwt_pubkey_file=""
jwt_discovery_url=""
audience="vault"
inference_role="weightguard-inference"
inference_sa="weightguard-inference"
inference_ns="ml-inference"
release_role="weightguard-release"
release_sa="weightguard-release"
release_ns="ml-release"
token_ttl="15m"
write_public_key=""
pin_context="false"

usage() {
  cat <<'EOF'
Usage: k8s/vault/apply.sh [options]

Model and keys:
  --model NAME                 model id (default demo-llm); Transit key wg-model-NAME
  --context TEXT               key-derivation context (default: the model id)
  --transit-mount PATH         Transit mount (default transit)
  --signing-key NAME           release signing key (default wg-release-signing)
  --audit-key NAME             ed25519 key signing audit checkpoints (default weightguard-audit)
  --write-public-key FILE      write the signing key's PEM public key to FILE
  --pin-context                inference policy also pins the derivation context
                               (forbids batch decrypts; see policies/*.hcl)
Auth (who may use the keys):
  --auth kubernetes|jwt|both   auth method(s) to configure (default kubernetes)
  --k8s-host URL               Kubernetes API server URL (TokenReview), for kubernetes auth
  --k8s-ca-cert FILE           its CA certificate (PEM)
  --token-reviewer-jwt-file F  JWT of a service account bound to system:auth-delegator
                               (k8s/vault/tokenreviewer-rbac.yaml); omit when Vault runs
                               in the cluster and uses its own service-account token
  --k8s-mount PATH             kubernetes auth mount (default kubernetes)
  --jwt-issuer URL             the cluster's service-account issuer, for jwt auth
  --jwt-discovery-url URL      OIDC discovery URL of the issuer (default: --jwt-issuer)
  --jwt-pubkey-file FILE       or: PEM public key(s) that sign the service-account tokens
  --jwt-mount PATH             jwt auth mount (default jwt)
  --audience AUD               projected token audience (default vault)
Identities (must match the manifests):
  --inference-namespace NS     default ml-inference
  --inference-sa NAME          default weightguard-inference
  --inference-role NAME        default weightguard-inference
  --release-namespace NS       default ml-release
  --release-sa NAME            default weightguard-release
  --release-role NAME          default weightguard-release
  --token-ttl DURATION         Vault token TTL issued at login (default 15m)
EOF
}

die() {
  echo "apply.sh: error: $*" >&2
  exit 1
}

need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) need_value "$@"; model="$2"; shift 2 ;;
    --context) need_value "$@"; context="$2"; shift 2 ;;
    --transit-mount) need_value "$@"; transit="$2"; shift 2 ;;
    --signing-key) need_value "$@"; signing_key="$2"; shift 2 ;;
    --audit-key) need_value "$@"; audit_key="$2"; shift 2 ;;
    --write-public-key) need_value "$@"; write_public_key="$2"; shift 2 ;;
    --pin-context) pin_context="true"; shift ;;
    --auth) need_value "$@"; auth="$2"; shift 2 ;;
    --k8s-host) need_value "$@"; k8s_host="$2"; shift 2 ;;
    --k8s-ca-cert) need_value "$@"; k8s_ca_cert="$2"; shift 2 ;;
    --token-reviewer-jwt-file) need_value "$@"; reviewer_jwt_file="$2"; shift 2 ;;
    --k8s-mount) need_value "$@"; k8s_mount="$2"; shift 2 ;;
    --jwt-issuer) need_value "$@"; jwt_issuer="$2"; shift 2 ;;
    --jwt-discovery-url) need_value "$@"; jwt_discovery_url="$2"; shift 2 ;;
    --jwt-pubkey-file) need_value "$@"; jwt_pubkey_file="$2"; shift 2 ;;
    --jwt-mount) need_value "$@"; jwt_mount="$2"; shift 2 ;;
    --audience) need_value "$@"; audience="$2"; shift 2 ;;
    --inference-namespace) need_value "$@"; inference_ns="$2"; shift 2 ;;
    --inference-sa) need_value "$@"; inference_sa="$2"; shift 2 ;;
    --inference-role) need_value "$@"; inference_role="$2"; shift 2 ;;
    --release-namespace) need_value "$@"; release_ns="$2"; shift 2 ;;
    --release-sa) need_value "$@"; release_sa="$2"; shift 2 ;;
    --release-role) need_value "$@"; release_role="$2"; shift 2 ;;
    --token-ttl) need_value "$@"; token_ttl="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

# Names end up in policy paths: accept only plain names, so nothing can widen a policy.
name_re='^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$'
for pair in "model:$model" "transit-mount:$transit" "signing-key:$signing_key" \
  "audit-key:$audit_key" \
  "k8s-mount:$k8s_mount" "jwt-mount:$jwt_mount" "inference-role:$inference_role" \
  "release-role:$release_role" "inference-sa:$inference_sa" "release-sa:$release_sa" \
  "inference-namespace:$inference_ns" "release-namespace:$release_ns"; do
  [[ "${pair#*:}" =~ $name_re ]] ||
    die "--${pair%%:*} '${pair#*:}' must be lowercase letters, digits, '.', '_' or '-'"
done
[[ "$model_prefix" =~ ^[a-z0-9-]+$ ]] || die "bad model key prefix"
case "$auth" in
  kubernetes | jwt | both) ;;
  *) die "--auth must be kubernetes, jwt or both (got '$auth')" ;;
esac
[[ -n "$context" ]] || context="$model"
model_key="${model_prefix}${model}"

cli="${VAULT_CLI:-}"
if [[ -z "$cli" ]]; then
  if command -v bao >/dev/null 2>&1; then
    cli="bao"
  elif command -v vault >/dev/null 2>&1; then
    cli="vault"
  else
    die "neither 'bao' nor 'vault' is on PATH (set VAULT_CLI to the CLI binary)"
  fi
fi
# The bao CLI reads BAO_*; the vault CLI reads VAULT_*. Accept either for both.
VAULT_ADDR="${VAULT_ADDR:-${BAO_ADDR:-}}"
export VAULT_ADDR BAO_ADDR="${BAO_ADDR:-$VAULT_ADDR}"
[[ -n "$VAULT_ADDR" ]] || die "set VAULT_ADDR (or BAO_ADDR) to the Vault/OpenBao address"
if [[ -z "${VAULT_TOKEN:-}${BAO_TOKEN:-}" ]]; then
  die "set VAULT_TOKEN (or BAO_TOKEN) to an admin token; ~/.vault-token is not used"
fi
VAULT_TOKEN="${VAULT_TOKEN:-${BAO_TOKEN:-}}"
export VAULT_TOKEN BAO_TOKEN="${BAO_TOKEN:-$VAULT_TOKEN}"

v() { "$cli" "$@"; }
log() { echo "apply.sh: $*" >&2; }

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }

render() {
  # render TEMPLATE: substitute the @...@ placeholders (values are validated names/base64).
  sed -e "s|@TRANSIT@|${transit}|g" \
    -e "s|@MODEL_KEY@|${model_key}|g" \
    -e "s|@MODEL_PREFIX@|${model_prefix}|g" \
    -e "s|@SIGNING_KEY@|${signing_key}|g" \
    -e "s|@AUDIT_KEY@|${audit_key}|g" \
    -e "s|@CONTEXT_B64@|$(b64 "$context")|g" \
    "$1"
}

mounted() {
  # mounted KIND PATH: is PATH/ listed by `secrets list` / `auth list`?
  local listing
  listing="$(v "$1" list -format=json)" || die "cannot list $1 engines (check VAULT_ADDR/VAULT_TOKEN)"
  grep -q "\"$2/\"" <<<"$listing"
}

# --- Transit and keys ------------------------------------------------------------------
if ! mounted secrets "$transit"; then
  log "enabling Transit at $transit/"
  v secrets enable -path="$transit" transit >/dev/null
fi

ensure_key() {
  # ensure_key NAME TYPE [derived]
  local name="$1" type="$2" derived="${3:-false}" info
  if info="$(v read -format=json "$transit/keys/$name" 2>/dev/null)"; then
    grep -q "\"type\": \"$type\"" <<<"$info" ||
      die "Transit key $transit/$name exists but is not of type $type; pick another name"
    if [[ "$derived" == "true" ]]; then
      grep -q '"derived": true' <<<"$info" ||
        die "Transit key $transit/$name exists without derivation; weightguard needs derived=true"
    fi
    log "Transit key $transit/$name exists"
  else
    log "creating Transit key $transit/$name ($type)"
    v write -f "$transit/keys/$name" type="$type" derived="$derived" exportable=false \
      allow_plaintext_backup=false >/dev/null
  fi
}
ensure_key "$model_key" aes256-gcm96 true
ensure_key "$signing_key" ecdsa-p256
# Signs the audit log's checkpoints (WEIGHTGUARD_AUDIT_SIGNING_KEY in the manifests).
ensure_key "$audit_key" ed25519

# --- Policies --------------------------------------------------------------------------
inference_policy="weightguard-inference-${model}"
release_policy="weightguard-release"
inference_hcl="$here/policies/weightguard-inference.hcl"
[[ "$pin_context" == "true" ]] && inference_hcl="$here/policies/weightguard-inference-pinned.hcl"
render "$inference_hcl" | v policy write "$inference_policy" - >/dev/null
render "$here/policies/weightguard-release.hcl" | v policy write "$release_policy" - >/dev/null
log "policies $inference_policy, $release_policy written"

# --- Auth ------------------------------------------------------------------------------
if [[ "$auth" == "kubernetes" || "$auth" == "both" ]]; then
  [[ -n "$k8s_host" ]] || die "--k8s-host is required for kubernetes auth"
  mounted auth "$k8s_mount" || v auth enable -path="$k8s_mount" kubernetes >/dev/null
  config=("kubernetes_host=$k8s_host")
  if [[ -n "$k8s_ca_cert" ]]; then
    [[ -r "$k8s_ca_cert" ]] || die "cannot read --k8s-ca-cert $k8s_ca_cert"
    config+=("kubernetes_ca_cert=@$k8s_ca_cert")
  fi
  if [[ -n "$reviewer_jwt_file" ]]; then
    [[ -r "$reviewer_jwt_file" ]] || die "cannot read --token-reviewer-jwt-file $reviewer_jwt_file"
    [[ -n "$k8s_ca_cert" ]] || die "--token-reviewer-jwt-file needs --k8s-ca-cert (Vault outside the cluster)"
    config+=("token_reviewer_jwt=@$reviewer_jwt_file" "disable_local_ca_jwt=true")
  fi
  v write "auth/$k8s_mount/config" "${config[@]}" >/dev/null
  v write "auth/$k8s_mount/role/$inference_role" \
    bound_service_account_names="$inference_sa" \
    bound_service_account_namespaces="$inference_ns" \
    audience="$audience" \
    token_policies="$inference_policy" token_no_default_policy=true \
    token_ttl="$token_ttl" token_max_ttl="$token_ttl" token_type=service >/dev/null
  v write "auth/$k8s_mount/role/$release_role" \
    bound_service_account_names="$release_sa" \
    bound_service_account_namespaces="$release_ns" \
    audience="$audience" \
    token_policies="$release_policy" token_no_default_policy=true \
    token_ttl="$token_ttl" token_max_ttl="$token_ttl" token_type=service >/dev/null
  log "kubernetes auth at auth/$k8s_mount: roles $inference_role, $release_role"
fi

if [[ "$auth" == "jwt" || "$auth" == "both" ]]; then
  [[ -n "$jwt_issuer" ]] || die "--jwt-issuer is required for jwt auth"
  mounted auth "$jwt_mount" || v auth enable -path="$jwt_mount" jwt >/dev/null
  if [[ -n "$jwt_pubkey_file" ]]; then
    [[ -r "$jwt_pubkey_file" ]] || die "cannot read --jwt-pubkey-file $jwt_pubkey_file"
    v write "auth/$jwt_mount/config" bound_issuer="$jwt_issuer" \
      jwt_validation_pubkeys=@"$jwt_pubkey_file" >/dev/null
  else
    v write "auth/$jwt_mount/config" bound_issuer="$jwt_issuer" \
      oidc_discovery_url="${jwt_discovery_url:-$jwt_issuer}" >/dev/null
  fi
  jwt_role() {
    # jwt_role ROLE NAMESPACE SA POLICY
    v write "auth/$jwt_mount/role/$1" role_type=jwt user_claim=sub \
      bound_audiences="$audience" \
      bound_subject="system:serviceaccount:$2:$3" \
      token_policies="$4" token_no_default_policy=true \
      token_ttl="$token_ttl" token_max_ttl="$token_ttl" token_type=service >/dev/null
  }
  jwt_role "$inference_role" "$inference_ns" "$inference_sa" "$inference_policy"
  jwt_role "$release_role" "$release_ns" "$release_sa" "$release_policy"
  log "jwt auth at auth/$jwt_mount: roles $inference_role, $release_role"
fi

# --- Public key of the release signing key ---------------------------------------------
if [[ -n "$write_public_key" ]]; then
  v read -format=json "$transit/keys/$signing_key" |
    python3 -c 'import json,sys
keys = json.load(sys.stdin)["data"]["keys"]
sys.stdout.write(keys[str(max(int(k) for k in keys))]["public_key"])' >"$write_public_key.tmp"
  mv -f "$write_public_key.tmp" "$write_public_key"
  log "public key of $transit/$signing_key written to $write_public_key"
fi

log "done: model $model (key $transit/$model_key, context '$context')"
