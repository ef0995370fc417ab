"""Key reference schemes recognised without importing their clients.

Every data key is looked up by its URI, so telling a Vault reference from the others is
on every load's path, while the Vault client code (:mod:`.vault`) is needed only when
a key lives there: the spelling rule is here, the client there (issue 25: import cost).
"""

from __future__ import annotations

__all__ = ["VAULT_SCHEMES", "is_vault_uri"]

# One spelling rule for every Vault key reference (data keys, signing keys, audit
# checkpoint keys): OpenBao speaks the Vault API, so ``openbao://`` and ``bao://`` are
# accepted as aliases of ``vault://`` everywhere.
VAULT_SCHEMES = ("vault://", "openbao://", "bao://")


def is_vault_uri(uri: str) -> bool:
    return uri.startswith(VAULT_SCHEMES)
