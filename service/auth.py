"""JWT verification and minting: the only module that imports jose.

Policy: the algorithm allow-list comes from settings, never from the token;
`exp` is required; `aud`/`iss` are checked when configured; `alg: none` and
HS/RS confusion are rejected before any signature check. Error messages are
short, fixed strings that never echo the token.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jose import jwk, jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError, JWTError

from .errors import AuthError, ConfigError, ForbiddenTopicError
from .settings import HS_ALGORITHMS, Settings
from .topics import ALL_TOPICS, parse_topics

DEV_SECRET_FILE = "jwt-secret"
#: Lifetime of the tokens minted for you in dev mode (the dashboard link of `serve`, `tail`).
DEV_TOKEN_TTL_S = 7 * 86400


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for and what it may read."""

    subject: str
    topics: frozenset[str]
    expires_at: float

    def check_topics(self, wanted: frozenset[str]) -> None:
        """Raise ForbiddenTopicError unless every wanted topic is allowed."""
        denied = wanted - self.topics
        if denied:
            raise ForbiddenTopicError("token does not allow topic(s): " + ", ".join(sorted(denied)))


class Verifier:
    """Verifies tokens with the configured key and algorithm allow-list. Cheap to call; holds no I/O."""

    def __init__(self, settings: Settings, key: str) -> None:
        self._settings = settings
        self._key = key
        self._algorithms = list(settings.jwt_algorithms)

    def verify(self, token: str | None) -> Principal:
        """Return the token's principal or raise AuthError with a client-safe reason."""
        if token is None or not token.strip():
            raise AuthError("missing token")
        if len(token) > self._settings.max_token_bytes:
            raise AuthError("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except JWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg") if isinstance(header, dict) else None
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError("token algorithm not allowed")
        options = {"require_exp": True, "verify_aud": self._settings.jwt_audience is not None,
                   # jose accepts a token *without* aud/iss even when one is configured; we do not.
                   "require_aud": self._settings.jwt_audience is not None,
                   "require_iss": self._settings.jwt_issuer is not None,
                   "leeway": self._settings.jwt_leeway_s}
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._key, algorithms=self._algorithms, options=options,
                audience=self._settings.jwt_audience, issuer=self._settings.jwt_issuer,
            )
        except ExpiredSignatureError:
            raise AuthError("token expired") from None
        except JWTClaimsError as exc:
            raise AuthError(_claims_reason(str(exc))) from None
        except JWTError as exc:
            # jose reports a missing required claim as a plain JWTError.
            reason = _claims_reason(str(exc)) if "required" in str(exc) else "invalid token signature"
            raise AuthError(reason) from None
        except Exception:  # jose raises assorted errors on hostile input; none may escape as a 500.
            raise AuthError("malformed token") from None
        return _principal(claims)


def _claims_reason(detail: str) -> str:
    lowered = detail.lower()
    if "audience" in lowered or '"aud"' in lowered:
        return "wrong token audience"
    if "issuer" in lowered or '"iss"' in lowered:
        return "wrong token issuer"
    if "before" in lowered or "nbf" in lowered or "not yet valid" in lowered:
        return "token not yet valid"
    if "exp" in lowered:
        return "token has no valid exp"
    return "invalid token claims"


def _principal(claims: dict[str, Any]) -> Principal:
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise AuthError("token has no valid exp")
    sub = claims.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise AuthError("invalid sub claim")
    raw_topics = claims.get("topics")
    if raw_topics is None:
        topics = ALL_TOPICS  # no claim: every topic, the spec's admin mode
    else:
        if not isinstance(raw_topics, str | list):
            raise AuthError("invalid topics claim")
        try:
            topics = parse_topics(raw_topics)
        except Exception:
            raise AuthError("invalid topics claim") from None
    return Principal(subject=sub or "anonymous-token", topics=topics, expires_at=float(exp))


def mint(settings: Settings, key: str, *, subject: str, ttl_s: float,
         topics: frozenset[str] | None = None, extra: dict[str, Any] | None = None) -> str:
    """Mint a token signed with `key` (the HS secret or the private key) using the first allowed algorithm."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + int(ttl_s)}
    if topics is not None:
        claims["topics"] = sorted(topics)
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    claims.update(extra or {})
    return str(jwt.encode(claims, key, algorithm=settings.jwt_algorithms[0]))


def _read_key(value: str, setting: str) -> str:
    """A key setting holds either PEM text or the path of a PEM file."""
    if "-----BEGIN" in value:
        return value
    # Key material pasted without its PEM lines must not be echoed as a "file name".
    shown = repr(value) if len(value) <= 200 and value.isprintable() else "(not PEM text, not a file name)"
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read key file {shown}: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError):  # a binary (DER) file, or NUL in the name
        raise ConfigError(f"{setting}: key file {shown} is not PEM text") from None


def _usable_key(key: str, settings: Settings, setting: str, *, signing: bool = False) -> str:
    """Check the key suits the first algorithm now, so bad key material is a startup error, not a 4001 per token."""
    algorithm = settings.jwt_algorithms[0]
    try:
        constructed = jwk.construct(key, algorithm)
    except Exception:  # jose and cryptography raise assorted errors for key material they cannot load
        what = "secret" if algorithm in HS_ALGORITHMS else "key (PEM text or the path of a PEM file)"
        raise ConfigError(f"{setting} is not a valid {algorithm} {what}") from None
    is_public = getattr(constructed, "is_public", None)  # asymmetric keys only
    if signing and callable(is_public) and is_public():
        raise ConfigError(f"{setting} holds a public key: minting {algorithm} tokens needs the private key")
    return key


def verification_key(settings: Settings) -> str:
    """The key tokens are verified with. Outside dev mode a missing key is a startup error."""
    if settings.jwt_algorithms[0] in HS_ALGORITHMS:
        if settings.jwt_secret:
            if len(settings.jwt_secret) < 32 and not settings.dev_mode:
                raise ConfigError("HUB_JWT_SECRET is too short: use at least 32 random characters")
            return _usable_key(settings.jwt_secret, settings, "HUB_JWT_SECRET")
        if settings.dev_mode:
            return dev_secret(settings.data_dir)
        raise ConfigError(
            "no JWT key: set HUB_JWT_SECRET (HS256) or HUB_JWT_PUBLIC_KEY with HUB_JWT_ALGORITHMS=RS256, "
            "or run in dev mode (HUB_DEV=true)"
        )
    if not settings.jwt_public_key:
        raise ConfigError(f"HUB_JWT_ALGORITHMS={settings.jwt_algorithms[0]} needs HUB_JWT_PUBLIC_KEY (PEM or path)")
    return _usable_key(_read_key(settings.jwt_public_key, "HUB_JWT_PUBLIC_KEY"), settings, "HUB_JWT_PUBLIC_KEY")


def signing_key(settings: Settings) -> str:
    """The key `zepix-hub token` signs with: the HS secret, or HUB_JWT_PRIVATE_KEY for asymmetric setups."""
    if settings.jwt_algorithms[0] in HS_ALGORITHMS:
        return verification_key(settings)
    if not settings.jwt_private_key:
        raise ConfigError("minting RS/ES tokens needs HUB_JWT_PRIVATE_KEY (PEM or path)")
    key = _read_key(settings.jwt_private_key, "HUB_JWT_PRIVATE_KEY")
    return _usable_key(key, settings, "HUB_JWT_PRIVATE_KEY", signing=True)


def dev_secret(data_dir: Path) -> str:
    """The dev-mode secret: random, created once, kept (mode 0600) in the data directory, never hard-coded."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / DEV_SECRET_FILE
    try:
        existing = path.read_text().strip()
        if existing:
            return existing
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(secret)
    tmp.chmod(0o600)
    tmp.replace(path)
    return secret

