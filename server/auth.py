"""Optional API key: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader

from server.state import ServerState, get_state

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")


def presented_key(request: Request, header_key: str | None) -> str | None:
    if header_key:
        return header_key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def keys_match(presented: str, expected: str) -> bool:
    """Constant-time comparison (``secrets.compare_digest`` on UTF-8 bytes, so any text is safe)."""
    return secrets.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def require_api_key(
    request: Request,
    header_key: str | None = Depends(_api_key_header),
    state: ServerState = Depends(get_state),
) -> None:
    """401 unless the server has no key or the request presents the right one."""
    expected = state.settings.api_key
    if expected is None:
        return
    key = presented_key(request, header_key)
    if key is None or not keys_match(key, expected.get_secret_value()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API key; send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
