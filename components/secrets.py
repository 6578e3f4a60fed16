"""Keep credentials out of what the steps print, log, tag or write: ``mask_secrets`` replaces them with ``***``.

A tracking URI or a git/DVC repository URL may carry a password or token (``https://user:token@host/...``,
``https://token@host/...``) and a presigned URL carries its signature in the query (``X-Amz-Signature=...``,
``token=...``). Every URL or setting that reaches a message, a log, an MLflow param or tag, a manifest or the fetch
state goes through :func:`mask_secrets` first; the unmasked value is used only to connect.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://userinfo@ -- userinfo ends at the last '@' before the host (a password may itself contain '@' only
# percent-encoded, but be lenient: take everything up to the last '@' before the next '/', whitespace or quote).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s'\"<>@]*(?:@[^/\s'\"<>@]*)*)@")
# Query parameters that carry credentials (presigned S3/GCS/Azure URLs, API tokens).
_SECRET_PARAMS = ("token", "access_token", "refresh_token", "id_token", "private_token", "api_key", "apikey", "key",
                  "secret", "client_secret", "password", "passwd", "pwd", "auth", "signature", "sig",
                  "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature",
                  "x-goog-credential")
_QUERY = re.compile(r"(?P<lead>[?&;](?:" + "|".join(re.escape(p) for p in _SECRET_PARAMS) + r")=)[^&#\s'\"<>]*",
                    re.IGNORECASE)
# Usernames that are conventions, not secrets (ssh://git@host/...).
_PUBLIC_USERS = ("git",)


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo = match.group("userinfo")
    user, sep, _password = userinfo.partition(":")
    if sep:
        return f"{match.group('scheme')}{user}:{MASK}@"
    if userinfo in _PUBLIC_USERS:
        return match.group(0)
    return f"{match.group('scheme')}{MASK}@"  # a lone token in the user part (https://<token>@github.com/...)


def mask_secrets(text: object) -> str:
    """``text`` (a URL, a setting or a whole message) with passwords, tokens and signatures replaced by ``***``.

    ``https://alice:s3cret@host/x`` -> ``https://alice:***@host/x``; ``https://ghp_abc@github.com/o/r`` ->
    ``https://***@github.com/o/r``; ``...?X-Amz-Signature=abc&x=1`` -> ``...?X-Amz-Signature=***&x=1``.
    """
    out = _USERINFO.sub(_mask_userinfo, str(text))
    return _QUERY.sub(lambda m: m.group("lead") + MASK, out)


__all__ = ["MASK", "mask_secrets"]
