"""The front door (issue 12): what a stranger on the network meets with the hub's defaults.

Everything runs through the real CLI (subprocesses) or a real hub on a real socket: dev mode only when a
person asks for it and only on loopback, the dev secret file, the audience check, the sys_status block of
the snapshot, forged log lines, key material in output, and passwords in DSNs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import re
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt

from service.store.database import mask_dsn
from tests.hubs import SECRET, HubProcess, RunningHub, connect, hub_settings, recv_json, refused, running_hub
from tests.test_auth import _claims, _without_aud
from tests.test_cli import NO_DB, ROOT, Run, assert_usage_error, cli, cli_env, read_line_until

NO_KEY_LINE = "set HUB_JWT_SECRET (32+ characters) or run `zepix-hub serve --demo` / `--dev`"


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """cli_env, except that a value of "" is kept (an explicitly empty variable) and None-like "-" unsets."""
    env = cli_env(NO_DB, tmp)
    env.update(extra)
    return {k: v for k, v in env.items() if v != "-"}


# -- 1. dev mode only when a person asks, and only on loopback ---------------------------------------------

async def test_serve_without_a_database_url_or_dev_mode_needs_a_real_key(tmp_path: Path) -> None:
    """No HUB_DATABASE_URL no longer means dev mode: the embedded database still, but no dev secret."""
    no_key, short = await asyncio.gather(
        cli(_env(tmp_path, HUB_DATABASE_URL="-", HUB_DEV="-", HUB_JWT_SECRET="-"), "serve", "--port", "0",
            within=120),
        cli(_env(tmp_path, HUB_DATABASE_URL="-", HUB_DEV="-", HUB_JWT_SECRET="s" * 8), "serve", "--port", "0",
            within=120),
    )
    assert_usage_error(no_key, "no JWT key", NO_KEY_LINE)
    assert len(no_key.err.splitlines()) == 1, no_key.err
    assert_usage_error(short, "HUB_JWT_SECRET is too short")
    assert not (tmp_path / "data" / "jwt-secret").exists()  # no dev secret was invented
    assert not (tmp_path / "data" / "pgdata").exists()  # refused before starting a database


async def test_serve_outside_dev_mode_ignores_a_dev_secret_left_in_the_data_dir(tmp_path: Path) -> None:
    """A dev secret from an earlier `serve --demo` does not become the key of a hub bound to the network."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "jwt-secret").write_text("d" * 64)
    (tmp_path / "data" / "jwt-secret").chmod(0o600)
    run = await cli(_env(tmp_path, HUB_DEV="-", HUB_JWT_SECRET="-"), "serve", "--host", "0.0.0.0", "--port", "0")
    # One line naming what to set, and not suggesting dev mode, which this bind would refuse.
    assert_usage_error(run, "no JWT key for 0.0.0.0", "set HUB_JWT_SECRET (32+ characters)")
    assert "--demo" not in run.err and len(run.err.splitlines()) == 1


async def test_dev_mode_refuses_a_non_loopback_bind_unless_forced(tmp_path: Path) -> None:
    dev_remote = dict(HUB_DEV="true", HUB_HOST="0.0.0.0", HUB_JWT_SECRET="-")
    flag, env_dev, v6, forced, loopback, v6_loopback = await asyncio.gather(
        cli(_env(tmp_path, HUB_JWT_SECRET="-"), "serve", "--dev", "--host", "0.0.0.0", "--port", "0"),
        cli(_env(tmp_path, **dev_remote), "token", "--sub", "x"),
        cli(_env(tmp_path, **{**dev_remote, "HUB_HOST": "::"}), "serve", "--port", "0"),
        cli(_env(tmp_path, **dev_remote, HUB_DEV_ALLOW_REMOTE="true"), "token", "--sub", "x"),
        cli(_env(tmp_path, HUB_DEV="true", HUB_JWT_SECRET="-"), "token", "--sub", "x"),
        cli(_env(tmp_path, HUB_DEV="true", HUB_JWT_SECRET="-", HUB_HOST="::1"), "token", "--sub", "x"),
    )
    for run in (flag, env_dev, v6):
        assert_usage_error(run, "dev mode", "not a loopback address", "--allow-remote-dev",
                           "HUB_DEV_ALLOW_REMOTE=true", "HUB_JWT_SECRET")
        assert len(run.err.splitlines()) == 1, run.err
    for run in (forced, loopback, v6_loopback):
        assert run.code == 0, run
        assert jwt.get_unverified_claims(run.out.strip())["sub"] == "x"


async def test_serve_dev_prints_a_dev_link_on_loopback(dsn: str, tmp_path: Path) -> None:
    """`serve --dev` against any database: a dev secret, and a dashboard link whose token the hub accepts."""
    env = _env(tmp_path, HUB_DATABASE_URL=dsn, HUB_JWT_SECRET="-", HUB_DEV="-", HUB_AUTO_MIGRATE="false")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "serve", "--dev", "--port", "0", env=env, cwd=str(ROOT),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = await read_line_until(proc.stdout, r"\?token=", within=60)
        found = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
        assert found is not None, line
        port, token = found.groups()
        assert jwt.get_unverified_claims(token)["aud"] == "zepix-hub"
        async with await connect(f"ws://127.0.0.1:{port}/ws/live?token={token}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
        assert (tmp_path / "data" / "jwt-secret").stat().st_mode & 0o777 == 0o600
        # The README's next step: `zepix-hub token` in the same directory signs with that dev secret.
        minted = await cli(_env(tmp_path, HUB_DATABASE_URL=dsn, HUB_JWT_SECRET="-", HUB_DEV="-"),
                           "token", "--sub", "bob")
        assert minted.code == 0, minted
        async with await connect(f"ws://127.0.0.1:{port}/ws/live?token={minted.out.strip()}") as ws:
            assert (await recv_json(ws))["sub"] == "bob"
        # And `zepix-hub tail` beside it mints its own dev token from the same file.
        tail = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.cli", "tail", "--json", "--url", f"http://127.0.0.1:{port}",
            env=_env(tmp_path, HUB_DATABASE_URL=dsn, HUB_JWT_SECRET="-", HUB_DEV="-"), cwd=str(ROOT),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            assert tail.stderr is not None
            await read_line_until(tail.stderr, r"^-- connected to ws://127\.0\.0\.1:\d+/ws/live", within=30)
        finally:
            tail.terminate()
            assert await asyncio.wait_for(tail.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


# -- 2. the dev secret file --------------------------------------------------------------------------------

def _dev_token_env(tmp: Path) -> dict[str, str]:
    return _env(tmp, HUB_DEV="true", HUB_JWT_SECRET="-")


async def test_dev_secret_file_is_created_0600_and_never_through_a_planted_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # Another user plants the name the secret used to be written under first, pointing at a file of theirs.
    bait = tmp_path / "bait"
    bait.write_text("")
    nobody = pwd.getpwnam("nobody")
    os.chown(bait, nobody.pw_uid, nobody.pw_gid)
    bait.chmod(0o666)
    (data / "jwt-secret.tmp").symlink_to(bait)

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "token", "--sub", "x", env=_dev_token_env(tmp_path), cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=lambda: os.umask(0))
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    secret_file = data / "jwt-secret"
    assert not secret_file.is_symlink()
    assert secret_file.stat().st_mode & 0o777 == 0o600, oct(secret_file.stat().st_mode)
    secret = secret_file.read_text()
    assert len(secret) >= 32 and bait.read_text() == ""
    assert sorted(p.name for p in data.iterdir()) == ["jwt-secret", "jwt-secret.tmp"]  # no temporary left
    # The token verifies with the secret kept in the file, and a second run reuses it.
    again = await cli(_dev_token_env(tmp_path), "token", "--sub", "y")
    for token in (out.decode().strip(), again.out.strip()):
        assert jwt.decode(token, secret, algorithms=["HS256"], audience="zepix-hub")["sub"] in ("x", "y")


async def test_a_dev_secret_file_others_can_read_or_own_is_refused(tmp_path: Path) -> None:
    readable, foreign, linked = tmp_path / "readable", tmp_path / "foreign", tmp_path / "linked"
    for home in (readable, foreign, linked):
        (home / "data").mkdir(parents=True)
    (readable / "data" / "jwt-secret").write_text("r" * 64)
    (readable / "data" / "jwt-secret").chmod(0o644)
    (foreign / "data" / "jwt-secret").write_text("f" * 64)
    (foreign / "data" / "jwt-secret").chmod(0o600)
    os.chown(foreign / "data" / "jwt-secret", pwd.getpwnam("nobody").pw_uid, -1)
    (linked / "target").write_text("l" * 64)
    (linked / "target").chmod(0o600)
    (linked / "data" / "jwt-secret").symlink_to(linked / "target")

    runs = await asyncio.gather(
        cli(_dev_token_env(readable), "token", "--sub", "x"),
        cli(_dev_token_env(foreign), "token", "--sub", "x"),
        cli(_dev_token_env(linked), "token", "--sub", "x"),
        cli(_env(readable, HUB_DEV="-", HUB_JWT_SECRET="-"), "token", "--sub", "x"),  # the dev data dir route
        cli(_dev_token_env(readable), "tail", "--url", "http://127.0.0.1:1"),
    )
    for run, words in zip(runs, ["readable by group or others (mode 0644)", "owned by uid",
                                 "not a regular file", "readable by group or others", "readable by group"],
                          strict=True):
        assert_usage_error(run, "jwt-secret", words)
        assert len(run.err.splitlines()) == 1, run.err
        assert run.out == ""
    assert (readable / "data" / "jwt-secret").read_text() == "r" * 64  # refused, not silently replaced


# -- 3. tokens for another service -------------------------------------------------------------------------

async def test_a_token_without_the_hubs_audience_is_refused(hub: RunningHub) -> None:
    """A token signed with the hub's key but minted for another service (no aud, another aud) gets nothing."""
    assert hub.settings.jwt_audience == "zepix-hub"  # the default, nothing configured
    base = _without_aud(_claims())
    cases = {
        "no aud": jwt.encode(base, SECRET, algorithm="HS256"),
        "another aud": jwt.encode({**base, "aud": "billing"}, SECRET, algorithm="HS256"),
        "aud list without the hub": jwt.encode({**base, "aud": ["billing", "crm"]}, SECRET, algorithm="HS256"),
    }
    async with httpx.AsyncClient(base_url=hub.http) as http:
        for name, token in cases.items():
            assert await refused(f"{hub.ws}?token={token}") == (4001, "wrong token audience"), name
            r = await http.get("/api/snapshot", headers={"Authorization": f"Bearer {token}"})
            assert (r.status_code, r.json()["detail"]) == (401, "wrong token audience"), name
    ok = jwt.encode({**base, "aud": "zepix-hub"}, SECRET, algorithm="HS256")
    async with await connect(f"{hub.ws}?token={ok}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"


async def test_an_explicitly_empty_audience_turns_the_check_off(dsn: str) -> None:
    async with running_hub(dsn, jwt_audience="") as running:
        assert running.settings.jwt_audience is None
        token = jwt.encode(_without_aud(_claims()), SECRET, algorithm="HS256")
        async with await connect(f"{running.ws}?token={token}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"


async def test_zepix_hub_token_sets_the_audience(tmp_path: Path) -> None:
    default, custom, off = await asyncio.gather(
        cli(_env(tmp_path), "token", "--sub", "a"),
        cli(_env(tmp_path, HUB_JWT_AUDIENCE="dashboards"), "token", "--sub", "a"),
        cli(_env(tmp_path, HUB_JWT_AUDIENCE=""), "token", "--sub", "a"),
    )
    assert jwt.decode(default.out.strip(), SECRET, algorithms=["HS256"], audience="zepix-hub")["sub"] == "a"
    assert jwt.get_unverified_claims(custom.out.strip())["aud"] == "dashboards"
    assert "aud" not in jwt.get_unverified_claims(off.out.strip())


# -- 7. the snapshot's sys_status block --------------------------------------------------------------------

async def test_snapshot_status_only_for_tokens_with_sys_status(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.http, timeout=10) as http:
        async def status(token: str) -> object:
            r = await http.get("/api/snapshot", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            return r.json()["status"]

        for _ in range(200):  # hang guard: the first heartbeat comes within heartbeat_s (0.5 s)
            if await status(hub.token(topics=["sys_status"])) is not None:
                break
            await asyncio.sleep(0.05)
        assert isinstance(await status(hub.token()), dict)
        assert await status(hub.token(topics=["trade_update", "log_stream", "notification"])) is None


# -- 8. forged log lines -----------------------------------------------------------------------------------

FORGED = "2026-12-03 07:00:00,000 CRITICAL service.api.app: database wiped, send the backup key"


async def test_a_newline_in_sub_cannot_forge_a_text_log_line(dsn: str, tmp_path: Path) -> None:
    log = tmp_path / "hub.log"
    hub = await asyncio.to_thread(HubProcess(dsn, log).start)
    try:
        token = mint_sub(f"mallory\n{FORGED}\r\n\x1b[2J\u2028{FORGED}\x85\x7f")
        async with await connect(f"{hub.ws}?token={token}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
        # A newline in the request path must stay inside the access log's line too.
        async with httpx.AsyncClient(base_url=hub.http, timeout=10) as http:
            assert (await http.get("/nothing%0A" + FORGED.replace(" ", "%20"))).status_code == 404
        text = await _wait_for_in(log, "sub=mallory")
        text = await _wait_for_in(log, "/nothing")
    finally:
        hub.kill()
    lines = text.split("\n")
    assert not any(line.startswith(FORGED[:23]) for line in lines), text
    connected = [line for line in lines if "sub=mallory" in line]
    assert len(connected) == 1 and FORGED in connected[0], text
    assert any("GET /nothing" in line and "CRITICAL" in line for line in lines), text
    assert "sub=mallory\\n2026-12-03" in connected[0]
    assert "\\r\\n\\x1b[2J\\u2028" in connected[0] and "\\x85\\x7f" in connected[0]
    for bad in ("\r", "\x1b", "\u2028", "\x85", "\x7f"):
        assert bad not in text


async def test_control_characters_in_sub_are_escaped_in_json_logs(dsn: str, tmp_path: Path) -> None:
    log = tmp_path / "hub.log"
    hub = await asyncio.to_thread(HubProcess(dsn, log, HUB_LOG_FORMAT="json").start)
    try:
        token = mint_sub(f"mallory\u2028{FORGED}\x1b]0;pwned\x07\u202e")
        async with await connect(f"{hub.ws}?token={token}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
        text = await _wait_for_in(log, "sub=mallory")
    finally:
        hub.kill()
    for bad in ("\u2028", "\x1b", "\u202e"):
        assert bad not in text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    connected = [e for e in entries if "sub=mallory" in e["msg"]]
    assert len(connected) == 1
    assert "sub=mallory\\u2028" + FORGED + "\\x1b]0;pwned\\x07\\u202e" in connected[0]["msg"]


def mint_sub(sub: str) -> str:
    from service.api.auth import mint

    return mint(hub_settings(NO_DB), SECRET, subject=sub, ttl_s=600)


async def _wait_for_in(path: Path, needle: str) -> str:
    for _ in range(400):  # hang guard: 20 s
        text = await asyncio.to_thread(path.read_text, errors="replace")
        if needle in text:
            return text
        await asyncio.sleep(0.05)
    raise AssertionError(f"{needle!r} never logged:\n{text[-3000:]}")


# -- 9. key material is never printed ----------------------------------------------------------------------

def _der_b64(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, public: bool = False) -> str:
    if public:
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return base64.b64encode(der).decode()


def _leaks(material: str, run: Run) -> bool:
    """Any 12-character stretch of the key material in the output."""
    output = run.out + run.err
    return any(material[i:i + 12] in output for i in range(0, max(1, len(material) - 12)))


async def test_key_material_is_never_printed_whatever_its_form(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_pem = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
    ec_public_pem = ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    broken_pem = ec_pem.replace(ec_pem.splitlines()[2][:10], "AAAAAAAAAA")
    cases: list[tuple[str, dict[str, str]]] = [
        (_der_b64(ec_key), dict(HUB_JWT_ALGORITHMS="ES256", HUB_JWT_PUBLIC_KEY=ec_public_pem,
                                HUB_JWT_PRIVATE_KEY=_der_b64(ec_key))),
        (_der_b64(ec_key, public=True), dict(HUB_JWT_ALGORITHMS="ES256",
                                              HUB_JWT_PUBLIC_KEY=_der_b64(ec_key, public=True))),
        (_der_b64(rsa_key, public=True), dict(HUB_JWT_ALGORITHMS="RS256",
                                               HUB_JWT_PUBLIC_KEY=_der_b64(rsa_key, public=True))),
        (broken_pem.splitlines()[3], dict(HUB_JWT_ALGORITHMS="ES256", HUB_JWT_PUBLIC_KEY=ec_public_pem,
                                          HUB_JWT_PRIVATE_KEY=broken_pem)),
        ("short-secret", dict(HUB_JWT_SECRET="short-secret")),
    ]
    commands: list[tuple[str, ...]] = [("token", "--sub", "x"), ("doctor",)]
    jobs = [(material, env, command) for material, env in cases for command in commands]
    jobs += [(material, env, ("serve", "--port", "0")) for material, env in cases[:2]]
    runs = await asyncio.gather(*(cli(_env(tmp_path, **{"HUB_JWT_SECRET": "-", **env}), *command)
                                  for _, env, command in jobs))
    for (material, _, command), run in zip(jobs, runs, strict=True):
        assert run.code != 0, command  # the run itself is not shown: it could hold the material
        assert "Traceback" not in run.out + run.err
        assert not _leaks(material, run), command


# -- 10. passwords in DSNs ---------------------------------------------------------------------------------

MASKED_DSNS = [
    ("postgresql://bot:s3cret@db:5432/zepix", "postgresql://bot:***@db:5432/zepix"),
    ("postgresql://bot@db/zepix?sslmode=require&password=s3cret", "postgresql://bot@db/zepix?sslmode=require&password=***"),
    ("postgresql:///zepix?host=/run/pg&password=s3cret#x", "postgresql:///zepix?host=/run/pg&password=***#x"),
    ("postgresql://bot@db/zepix?sslkey=/k.pem&sslpassword=s3cret", "postgresql://bot@db/zepix?sslkey=/k.pem&sslpassword=***"),
    ("postgresql://bot@db/zepix?SSLPassword=s3cret", "postgresql://bot@db/zepix?SSLPassword=***"),
    ("postgresql://bot@db/zepix?pass%77ord=s3cret", "postgresql://bot@db/zepix?pass%77ord=***"),
    ("postgresql://bot@db/zepix?password=a&password=s3cret", "postgresql://bot@db/zepix?password=***&password=***"),
    ("postgresql://bot:p@ss:w@rd@db/zepix", "postgresql://bot:***@db/zepix"),
    ("postgresql://bot:pa?ss#w@db/zepix", "postgresql://bot:***@db/zepix"),
    ("postgresql://bot:s3cret@h1:5432,h2:5433/zepix?target_session_attrs=read-write",
     "postgresql://bot:***@h1:5432,h2:5433/zepix?target_session_attrs=read-write"),
    ("postgresql://bot@db/zepix?passfile=/home/bot/.pgpass&sslcert=/c.pem",
     "postgresql://bot@db/zepix?passfile=/home/bot/.pgpass&sslcert=/c.pem"),
    ("postgresql://bot@db/zepix?dbname=postgresql://u:s3cret@other/x", "postgresql://bot@db/zepix?dbname=***"),
    ("postgresql://db/zepix?application_name=a@b", "postgresql://db/zepix?application_name=a@b"),
    ("postgresql://bot@db/zepix", "postgresql://bot@db/zepix"),
]


@pytest.mark.parametrize(("dsn", "shown"), MASKED_DSNS)
def test_mask_dsn_hides_every_secret_bearing_part(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown
    assert "s3cret" not in mask_dsn(dsn)


# -- doctor reports the security-relevant settings ---------------------------------------------------------

async def test_doctor_reports_the_security_settings(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    dev_dir = tmp_path / "dev-dir"
    (dev_dir / "data").mkdir(parents=True)
    (dev_dir / "data" / "jwt-secret").write_text("d" * 64)
    (dev_dir / "data" / "jwt-secret").chmod(0o600)
    prod, remote_open, dev, rs, left_over = await asyncio.gather(
        cli(_env(tmp_path), "doctor"),
        cli(_env(tmp_path, HUB_HOST="0.0.0.0", HUB_JWT_AUDIENCE=""), "doctor"),
        cli(_env(tmp_path, HUB_DEV="true", HUB_JWT_SECRET="-"), "doctor"),
        cli(_env(tmp_path, HUB_JWT_SECRET="-", HUB_JWT_ALGORITHMS="RS256", HUB_JWT_PUBLIC_KEY=public_pem),
            "doctor"),
        cli(_env(dev_dir, HUB_DEV="-", HUB_JWT_SECRET="-"), "doctor"),
    )
    assert re.search(r"^OK    dev mode: off$", prod.out, re.M), prod.out
    assert re.search(r"^OK    audience: tokens must carry aud=zepix-hub", prod.out, re.M), prod.out
    assert re.search(rf"^OK    JWT key: HS256 secret from HUB_JWT_SECRET \({len(SECRET)} characters\)",
                     prod.out, re.M), prod.out
    assert re.search(r"^OK    bind address: 127\.0\.0\.1 \(loopback", prod.out, re.M), prod.out

    assert re.search(r"^WARN  audience: check off \(HUB_JWT_AUDIENCE is empty\)", remote_open.out, re.M)
    assert re.search(r"^WARN  bind address: 0\.0\.0\.0 is reachable from the network", remote_open.out, re.M)

    assert re.search(r"^WARN  dev mode: on \(loopback only", dev.out, re.M), dev.out
    assert re.search(r"^WARN  JWT key: HS256 secret from the dev secret in .*\(64 characters\)", dev.out, re.M)

    assert re.search(r"^OK    JWT key: RS256 RSA 2048-bit public key from HUB_JWT_PUBLIC_KEY", rs.out, re.M), rs.out

    # After `serve --demo`, a plain doctor says why a plain `serve` would refuse, and how to check dev mode.
    assert re.search(r"^FAIL  JWT key: no JWT key", left_over.out, re.M), left_over.out
    assert "holds a dev secret" in left_over.out and "HUB_DEV=true zepix-hub doctor" in left_over.out


async def test_rsa_keys_under_2048_bits_are_refused(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    public_pem = small.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    run = await cli(_env(tmp_path, HUB_JWT_SECRET="-", HUB_JWT_ALGORITHMS="RS256", HUB_JWT_PUBLIC_KEY=public_pem),
                    "serve", "--port", "0")
    assert_usage_error(run, "HUB_JWT_PUBLIC_KEY", "1024-bit", "at least 2048")
