"""JWT verification and minting: the only module that imports jose.

The algorithm allow-list comes from settings, never from the token; `exp` and `aud` are required, `iss` when
configured; `alg: none` and HS/RS confusion are refused before any signature check. Messages never echo a
token or a key setting's value (docs/adr/0008-dev-mode-and-audience.md).
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError, JWTError

from ..errors import AuthError, ConfigError, ForbiddenTopicError, UnknownTopicError
from ..filters import Scope, parse_scope
from ..protocol import CLOSE_BAD_REQUEST, CLOSE_FORBIDDEN
from ..settings import HS_ALGORITHMS, Settings
from ..topics import ALL_TOPICS, parse_topics

DEV_SECRET_FILE = "jwt-secret"
#: RSA keys shorter than this are refused (NIST SP 800-131A has disallowed 1024-bit RSA signatures since 2013).
MIN_RSA_BITS = 2048
#: Lifetime of the tokens minted for you in dev mode (the dashboard link of `serve`, `tail`).
DEV_TOKEN_TTL_S = 7 * 86400


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for and what it may read."""

    subject: str
    topics: frozenset[str]
    expires_at: float
    scope: Scope | None = None  # the row scope (docs/protocol.md, "Row scopes"); None: every row of its topics

    def check_topics(self, wanted: frozenset[str]) -> None:
        """Raise ForbiddenTopicError unless every wanted topic is allowed."""
        denied = wanted - self.topics
        if denied:
            raise ForbiddenTopicError("token does not allow topic(s): " + ", ".join(sorted(denied)))


TopicError = UnknownTopicError | ForbiddenTopicError
#: For `except`: the topic problems topic_refusal tells the client about.
TOPIC_ERRORS = (UnknownTopicError, ForbiddenTopicError)


@dataclass(frozen=True, slots=True)
class TopicRefusal:
    """How a topic problem is told on each channel: a topic the hub does not know is the request's fault
    (4400, 422), one the token does not allow is the token's (4003, 403); docs/protocol.md."""

    code: str  # the error frame's code
    reason: str  # the close reason when refused at connect
    close_code: int
    status: int  # the HTTP status of /api/events


def topic_refusal(exc: TopicError) -> TopicRefusal:
    if isinstance(exc, ForbiddenTopicError):
        return TopicRefusal("forbidden_topic", "topic not allowed", CLOSE_FORBIDDEN, 403)
    return TopicRefusal("unknown_topic", "unknown topic", CLOSE_BAD_REQUEST, 422)


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
    raw_scope = claims.get("scope")
    scope = None
    if raw_scope is not None:
        try:
            scope = parse_scope(raw_scope)
        except ValueError as exc:  # names a field or a rule, never the token
            raise AuthError(f"invalid scope claim: {exc}"[:120]) from None
    return Principal(subject=sub or "anonymous-token", topics=topics, expires_at=float(exp), scope=scope)


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
    """A key setting holds either PEM text or the path of a PEM file.

    The value is shown only when it names an existing file: anything else that is not PEM text may be
    key material (base64 DER, a JWK, a PEM body without its lines), bound for a terminal or journald.
    """
    if "-----BEGIN" in value:
        return value
    try:
        return Path(value).read_text()
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: NUL in the value
        try:
            named = Path(value).exists()  # only a value that names an existing file is a file name to show
        except (OSError, ValueError):
            named = False
        if not named:
            raise ConfigError(f"{setting}: not PEM text, and no file by that name "
                              "(the value is not shown: it may be key material)") from None
        if isinstance(exc, OSError):
            raise ConfigError(f"{setting}: cannot read key file {value!r}: {exc.strerror}") from None
        raise ConfigError(f"{setting}: key file {value!r} is not PEM text") from None


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
    bits = _rsa_bits(constructed)
    if bits is not None and bits < MIN_RSA_BITS:
        raise ConfigError(f"{setting} is a {bits}-bit RSA key: use at least {MIN_RSA_BITS} bits")
    return key


def _rsa_bits(constructed: object) -> int | None:
    prepared = getattr(constructed, "prepared_key", None)
    return prepared.key_size if isinstance(prepared, rsa.RSAPrivateKey | rsa.RSAPublicKey) else None


def describe_key(settings: Settings, key: str) -> str:
    """How strong the verification key is, in words (`doctor`): never a byte of the key itself."""
    algorithm = settings.jwt_algorithms[0]
    if algorithm in HS_ALGORITHMS:
        return f"{len(key)} characters"
    constructed = jwk.construct(key, algorithm)
    prepared = getattr(constructed, "prepared_key", None)
    bits = _rsa_bits(constructed)
    if bits is not None:
        return f"RSA {bits}-bit"
    if isinstance(prepared, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"EC {prepared.curve.name}"
    return type(prepared).__name__


def check_exposure(settings: Settings) -> None:
    """Dev mode on a non-loopback bind is refused unless forced: its tokens would reach the network."""
    if settings.dev_mode and not settings.loopback and not settings.dev_allow_remote:
        raise ConfigError(
            f"dev mode on {settings.host}, which is not a loopback address: set HUB_JWT_SECRET (32+ characters) "
            "and leave dev mode off (no --dev/--demo, HUB_DEV unset), or force it with --allow-remote-dev "
            "(HUB_DEV_ALLOW_REMOTE=true)")


NO_KEY = "set HUB_JWT_SECRET (32+ characters) or run `zepix-hub serve --demo` / `--dev`"


def verification_key(settings: Settings) -> str:
    """The key tokens are verified with. Outside dev mode a missing key is a startup error."""
    check_exposure(settings)
    if settings.jwt_algorithms[0] in HS_ALGORITHMS:
        if settings.jwt_secret:
            # Also in dev mode: a short secret is guessable offline from any one token.
            if len(settings.jwt_secret) < 32:
                raise ConfigError("HUB_JWT_SECRET is too short: use at least 32 random characters")
            return _usable_key(settings.jwt_secret, settings, "HUB_JWT_SECRET")
        if settings.dev_mode:
            return dev_secret(settings.data_dir)
        if not settings.loopback:  # dev mode would be refused here: do not suggest it
            raise ConfigError(f"no JWT key for {settings.host}, a non-loopback address: set HUB_JWT_SECRET "
                              "(32+ characters), or HUB_JWT_PUBLIC_KEY with HUB_JWT_ALGORITHMS=RS256")
        raise ConfigError(f"no JWT key: {NO_KEY} (or HUB_JWT_PUBLIC_KEY with HUB_JWT_ALGORITHMS=RS256)")
    if not settings.jwt_public_key:
        raise ConfigError(f"HUB_JWT_ALGORITHMS={settings.jwt_algorithms[0]} needs HUB_JWT_PUBLIC_KEY (PEM or path)")
    return _usable_key(_read_key(settings.jwt_public_key, "HUB_JWT_PUBLIC_KEY"), settings, "HUB_JWT_PUBLIC_KEY")


def signing_key(settings: Settings) -> str:
    """The key `zepix-hub token` signs with: the HS secret, or HUB_JWT_PRIVATE_KEY for asymmetric setups.

    With no key configured and dev mode off, the dev secret of a data dir where `serve --demo`/`--dev`
    ran is used if it exists: minting with a file this user can read already gives nobody anything new.
    """
    if settings.jwt_algorithms[0] in HS_ALGORITHMS:
        if not settings.jwt_secret and not settings.dev_mode:
            existing = existing_dev_secret(settings.data_dir)
            if existing is not None:
                return existing
        return verification_key(settings)
    if not settings.jwt_private_key:
        raise ConfigError("minting RS/ES tokens needs HUB_JWT_PRIVATE_KEY (PEM or path)")
    key = _read_key(settings.jwt_private_key, "HUB_JWT_PRIVATE_KEY")
    return _usable_key(key, settings, "HUB_JWT_PRIVATE_KEY", signing=True)


def existing_dev_secret(data_dir: Path) -> str | None:
    """The dev secret kept in `data_dir`, or None if there is none. ConfigError for a file others could
    have read or written: group/world access, another owner, a symlink, not a regular file, empty."""
    path = data_dir / DEV_SECRET_FILE
    try:
        # O_NOFOLLOW: a symlink planted at this name must not lead the hub to someone else's file.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if path.is_symlink():
            raise ConfigError(f"dev secret file {path} is a symbolic link, not a regular file: delete it") from None
        raise ConfigError(f"cannot read the dev secret file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "r") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"dev secret file {path} is not a regular file: delete it")
        if info.st_uid != os.geteuid():
            raise ConfigError(f"dev secret file {path} is owned by uid {info.st_uid}, not by this user "
                              f"(uid {os.geteuid()}): delete it so a new one is made")
        if info.st_mode & 0o077:
            raise ConfigError(f"dev secret file {path} is readable by group or others "
                              f"(mode {stat.S_IMODE(info.st_mode):04o}): delete it so a new one is made "
                              "(its secret may have been read)")
        secret = file.read().strip()
    if not secret:
        raise ConfigError(f"dev secret file {path} is empty: delete it so a new one is made")
    return secret


def dev_secret(data_dir: Path) -> str:
    """The dev-mode secret: random, created once, kept in the data directory, never hard-coded.

    Written to an unpredictable temporary name created with O_EXCL and mode 0600 (mkstemp), then linked
    to its final name, so the secret is never readable by others, not even for an instant, and never
    written through a name someone else prepared. Two processes racing get the same secret: link()
    fails for the second, which then reads the first one's.
    """
    # No mode on the directory: run as root, the embedded PostgreSQL's own user must traverse it.
    data_dir.mkdir(parents=True, exist_ok=True)
    existing = existing_dev_secret(data_dir)
    if existing is not None:
        return existing
    secret = secrets.token_urlsafe(48)
    fd, tmp = tempfile.mkstemp(prefix=f".{DEV_SECRET_FILE}-", dir=data_dir)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secret)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(tmp, data_dir / DEV_SECRET_FILE)
        except FileExistsError:
            raced = existing_dev_secret(data_dir)
            if raced is None:  # gone again between link() and the read: a person is deleting it
                raise ConfigError(f"the dev secret file in {data_dir} keeps disappearing") from None
            return raced
    finally:
        os.unlink(tmp)
    return secret
