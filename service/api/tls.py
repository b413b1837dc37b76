"""TLS served by the hub itself: check HUB_TLS_CERT/HUB_TLS_KEY before anything starts.

`check_tls` loads the pair once, as uvicorn will in every worker, and turns each failure into one line that
names the setting and the file, never the key (docs/adr/0011-tls-and-proxy.md).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import ConfigError
from ..settings import Settings


def _no_passphrase() -> bytes:
    # Called by OpenSSL for an encrypted key: answer instead of prompting on the terminal. The hub takes no
    # passphrase (it would sit beside the key); the load then fails and the error says so.
    return b""


def _readable(setting: str, path: Path) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: cannot read it ({exc.strerror or exc})") from None


def check_tls(settings: Settings) -> ssl.SSLContext | None:
    """The server context the hub will use, or None without TLS; ConfigError (one line) for a bad pair."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    cert, key = settings.tls_cert, settings.tls_key
    _readable("HUB_TLS_CERT", cert)
    _readable("HUB_TLS_KEY", key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_verify_locations(cafile=str(cert))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"HUB_TLS_CERT {cert}: not a PEM certificate ({_reason(exc)})") from None
    try:
        context.load_cert_chain(str(cert), str(key), password=_no_passphrase)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"HUB_TLS_KEY {key}: not an unencrypted PEM private key matching HUB_TLS_CERT {cert} "
                          f"({_reason(exc)})") from None
    return context


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
