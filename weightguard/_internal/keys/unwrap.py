"""Unwrapping data keys: the one sequence every reader of encrypted files runs (the
loader, the side files, decrypt, inspect, rewrap).

A header's key reference is untrusted: every file's key URI is chosen
(:func:`~weightguard._internal.keys.providers.choose_key_uri`) before any provider is
contacted; then one ``unwrap_many`` round trip per provider.  A caller's own provider
object (not a URI) unwraps everything itself.  The data keys are the caller's to wipe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weightguard._internal.keys.providers import KeyProvider, choose_key_uri, provider_for
from weightguard.errors import ConfigError, KeyAccessDenied, WrongKeyError
from weightguard.manifest import WrappedKey

__all__ = ["Refused", "UnwrappedGroup", "unwrap_groups"]

#: ``refused(indexes, exc)``: told which wrapped keys a refusal concerns before it
#: propagates (the loader checks there whether those files differ from their signature).
Refused = Callable[[list[int], BaseException], None]


@dataclass
class UnwrappedGroup:
    """The data keys one provider returned: ``data_keys[j]`` is for ``indexes[j]``."""

    uri: str
    indexes: list[int]
    data_keys: list[bytearray]


def unwrap_groups(
    wrapped: Sequence[WrappedKey],
    *,
    key: str | KeyProvider | None,
    key_options: Mapping[str, Any] | None = None,
    allowed_keys: Iterable[str] | str | None = None,
    where: Sequence[str] | None = None,
    refused: Refused | None = None,
) -> Iterator[UnwrappedGroup]:
    """Each provider's data keys, one group at a time (the caller wipes each group's
    keys once used).  Every URI is chosen before the first group is unwrapped."""
    own = None if key is None or isinstance(key, str) else key  # the caller's provider
    key_uri = key if isinstance(key, str) else None
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(wrapped):
        if own is not None:
            uri = w.uri
        else:
            try:
                uri = choose_key_uri(
                    w.uri,
                    key=key_uri,
                    allowed=allowed_keys,
                    where=where[i] if where else "the artifact",
                )
            except (ConfigError, KeyAccessDenied) as exc:  # the key reference it names
                if refused is not None:
                    refused([i], exc)
                raise
        groups.setdefault(uri, []).append(i)
    for uri, indexes in groups.items():
        provider = own if own is not None else provider_for(uri, **dict(key_options or {}))
        try:
            data_keys = provider.unwrap_many([wrapped[i] for i in indexes])
        except WrongKeyError as exc:  # a wrong key, or a changed wrapped key
            if refused is not None:
                refused(indexes, exc)
            raise
        yield UnwrappedGroup(uri, indexes, data_keys)
