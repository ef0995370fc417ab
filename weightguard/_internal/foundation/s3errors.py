"""What went wrong with an S3 call, in words: the one table of S3 refusals.

botocore reports a refusal as ``ClientError`` (or, from the transfer manager, only as
text holding "An error occurred (Code)"); a message that shows just the class name
leaves the user guessing between a wrong key, a missing bucket and a network fault.
"""

from __future__ import annotations

import re

__all__ = ["REFUSED", "error_code", "s3_cause"]

# S3 error codes that mean "refused" (not worth a retry), as users should read them.
REFUSED = {
    "AccessDenied": "access denied",
    "InvalidAccessKeyId": "the access key is not valid",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "ExpiredToken": "the credentials have expired",
    "InvalidToken": "the session token is not valid",
    "NoSuchBucket": "the bucket does not exist",
}


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of ``exc`` (``AccessDenied``, ``NoSuchBucket``...), if any."""
    try:
        from botocore.exceptions import ClientError
    except ImportError:  # pragma: no cover - boto3 is a core dependency
        ClientError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "") or None
    # S3UploadFailedError only keeps the text: "... An error occurred (Code) when ..."
    m = re.search(r"An error occurred \(([A-Za-z0-9]+)\)", str(exc))
    return m.group(1) if m else None


def s3_cause(exc: BaseException) -> str:
    """A short phrase for ``exc``: "access denied (AccessDenied)", "cannot reach the S3
    endpoint", "no S3 credentials found", else the error code or the class name."""
    import botocore.exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return "no S3 credentials found"
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return "cannot reach the S3 endpoint"
    if isinstance(exc, bx.ReadTimeoutError):
        return "the S3 endpoint timed out"
    code = error_code(exc)
    if code in REFUSED:
        return f"{REFUSED[code]} ({code})"
    if code:
        return f"S3 error {code}"
    return type(exc).__name__
