"""`serve` with a certificate: https:// and wss:// that a client verifying against the CA accepts, one clear
line for a bad pair, and doctor saying whether TLS is on."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets

from service.api.auth import mint
from service.settings import load_settings
from tests.certs import make_pki
from tests.hubs import SECRET, HubProcess, connect, recv_json, recv_until
from tests.test_cli import cli, cli_env, read_line_until, spawn


async def started(proc: HubProcess, apps: int, within: float = 60) -> None:
    deadline = time.monotonic() + within  # hang guard
    while proc.log_path.read_text().count("Application startup complete") < apps:
        if time.monotonic() > deadline:
            raise TimeoutError(proc.log_path.read_text()[-3000:])
        await asyncio.sleep(0.05)


def _token() -> str:
    return mint(load_settings(jwt_secret=SECRET), SECRET, subject="tls", ttl_s=600)


@pytest.mark.parametrize("how", ["flags", "env-2-workers"])
async def test_wss_and_https_verify_against_the_ca_and_an_untrusting_client_fails(
        dsn: str, db: asyncpg.Connection, tmp_path: Path, how: str) -> None:
    pki = make_pki(tmp_path / "pki")
    if how == "flags":
        proc = HubProcess(dsn, tmp_path / "hub.log", args=("--tls-cert", str(pki.cert), "--tls-key", str(pki.key)))
    else:
        proc = HubProcess(dsn, tmp_path / "hub.log", args=("--workers", "2"),
                          HUB_TLS_CERT=str(pki.cert), HUB_TLS_KEY=str(pki.key))
    proc.start(timeout=60)
    try:
        # "live at" is printed once the socket is bound; with --workers, wait for each worker's app too.
        await started(proc, 1 if how == "flags" else 2)
        assert proc.scheme == "https", proc.log_path.read_text()[-2000:]  # the printed URL says https
        token = _token()
        trusting = pki.client_context()
        async with await connect(f"{proc.ws}?token={token}&topics=trade_update", ssl=trusting) as ws:
            assert proc.ws.startswith("wss://")
            welcome = await recv_json(ws)
            assert welcome["type"] == "welcome", welcome
            await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('ETHUSDT', 'SELL', 2)")
            seq = await db.fetchval("SELECT max(seq) FROM events WHERE topic = 'trade_update'")
            frame = await recv_until(ws, lambda f: f.get("type") == "event")
            assert (frame["seq"], frame["data"]["trade"]["symbol"]) == (seq, "ETHUSDT"), frame
            assert ws.transport.get_extra_info("ssl_object") is not None  # really TLS on the wire

        async with httpx.AsyncClient(verify=trusting, timeout=10) as client:
            page = (await client.get(f"{proc.http}/api/events", params={"since": 0, "topics": "trade_update"},
                                     headers={"Authorization": f"Bearer {token}"})).json()
        assert [e["seq"] for e in page["events"]] == [seq], page

        # A client that does not trust the CA: the system's roots, or another CA. Each fails verification.
        other = make_pki(tmp_path / "other", name="other").client_context()
        for untrusting in (ssl.create_default_context(), other):
            with pytest.raises(ssl.SSLCertVerificationError):
                await websockets.connect(f"{proc.ws}?token={token}", ssl=untrusting, open_timeout=10)
            async with httpx.AsyncClient(verify=untrusting, timeout=10) as client:
                with pytest.raises(httpx.ConnectError) as refused:
                    await client.get(f"{proc.http}/healthz")
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError) or \
                "CERTIFICATE_VERIFY_FAILED" in str(refused.value), repr(refused.value)
    finally:
        assert proc.terminate() == 0, proc.log_path.read_text()[-3000:]


async def test_a_bad_certificate_or_key_is_one_line_at_start(dsn: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", name="other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    from cryptography.hazmat.primitives import serialization

    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret-passphrase")))
    missing = tmp_path / "no-such.pem"
    cases: list[tuple[tuple[str, ...], dict[str, str], str]] = [
        (("--tls-cert", str(pki.cert)), {}, "HUB_TLS_CERT (--tls-cert) is set but HUB_TLS_KEY (--tls-key) is not"),
        ((), {"HUB_TLS_KEY": str(pki.key)}, "HUB_TLS_KEY (--tls-key) is set but HUB_TLS_CERT (--tls-cert) is not"),
        (("--tls-cert", str(missing), "--tls-key", str(pki.key)), {},
         f"HUB_TLS_CERT {missing}: cannot read it (No such file or directory)"),
        ((), {"HUB_TLS_CERT": str(pki.cert), "HUB_TLS_KEY": str(missing)},
         f"HUB_TLS_KEY {missing}: cannot read it (No such file or directory)"),
        (("--tls-cert", str(garbage), "--tls-key", str(pki.key)), {}, f"HUB_TLS_CERT {garbage}: not a PEM certificate"),
        (("--tls-cert", str(pki.key), "--tls-key", str(pki.key)), {}, f"HUB_TLS_CERT {pki.key}: not a PEM certificate"),
        (("--tls-cert", str(pki.cert), "--tls-key", str(other.key)), {},
         f"HUB_TLS_KEY {other.key}: not an unencrypted PEM private key matching HUB_TLS_CERT {pki.cert}"),
        (("--tls-cert", str(pki.cert), "--tls-key", str(encrypted)), {},
         f"HUB_TLS_KEY {encrypted}: not an unencrypted PEM private key matching HUB_TLS_CERT {pki.cert}"),
    ]
    runs = await asyncio.gather(*(cli(cli_env(dsn, tmp_path, HUB_AUTO_MIGRATE="false", **env), "serve", "--port", "0",
                                      *args, within=30) for args, env, _ in cases))
    for (args, env, words), run in zip(cases, runs, strict=True):
        assert run.code == 2, (args, env, run)  # a configuration error, as for every bad setting
        assert "Traceback" not in run.out + run.err and "live at" not in run.out, (args, run)
        (line,) = run.err.strip().splitlines()
        assert line.startswith("zepix-hub: ") and words in line, (args, env, line)
        assert "BEGIN" not in line and "bm90" not in line  # file contents are never echoed


async def test_doctor_reports_tls_on_off_and_broken(dsn: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", name="other")
    off, on, broken = await asyncio.gather(
        cli(cli_env(dsn, tmp_path), "doctor"),
        cli(cli_env(dsn, tmp_path, HUB_TLS_CERT=str(pki.cert), HUB_TLS_KEY=str(pki.key)), "doctor"),
        cli(cli_env(dsn, tmp_path, HUB_TLS_CERT=str(pki.cert), HUB_TLS_KEY=str(other.key)), "doctor"))
    assert re.search(r"^OK    TLS: off: the hub serves http:// and ws://", off.out, re.M), off
    assert re.search(rf"^OK    TLS: on: https:// and wss:// with {re.escape(str(pki.cert))}$", on.out, re.M), on
    assert on.code == 0 and off.code == 0, (on, off)
    assert re.search(r"^FAIL  TLS: HUB_TLS_KEY .*not an unencrypted PEM private key", broken.out, re.M), broken
    assert broken.code == 1 and "Traceback" not in broken.out + broken.err, broken


async def test_forwarded_headers_are_believed_from_hub_forwarded_allow_ips_only(dsn: str, tmp_path: Path) -> None:
    """X-Forwarded-For from a peer outside HUB_FORWARDED_ALLOW_IPS is ignored, whatever uvicorn's own
    FORWARDED_ALLOW_IPS says in the environment; from a listed peer (the proxy: loopback by default) it names
    the client. uvicorn's access log shows which address the hub took."""
    forged = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    nobody = HubProcess(dsn, tmp_path / "nobody.log", HUB_FORWARDED_ALLOW_IPS="", FORWARDED_ALLOW_IPS="*")
    default = HubProcess(dsn, tmp_path / "default.log")
    for proc in (nobody, default):
        proc.start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for proc in (nobody, default):
                assert (await client.get(f"{proc.http}/healthz", headers=forged)).status_code == 200

        def access(proc: HubProcess) -> list[str]:
            return [line for line in proc.log_path.read_text().splitlines() if "GET /healthz" in line]

        deadline = time.monotonic() + 10  # hang guard: the access line is written after the response
        while not (access(nobody) and access(default)):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        (untrusted,), (trusted,) = access(nobody), access(default)
        assert "203.0.113.7" not in untrusted and "127.0.0.1:" in untrusted, untrusted
        assert "203.0.113.7" in trusted, trusted
    finally:
        for proc in (nobody, default):
            proc.terminate()


async def test_tail_follows_a_tls_hub_by_its_settings(dsn: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    """`zepix-hub tail` beside a hub with TLS (the same HUB_* settings, no --url) connects with wss://; the CA
    comes from OpenSSL's usual SSL_CERT_FILE."""
    pki = make_pki(tmp_path / "pki")
    proc = HubProcess(dsn, tmp_path / "hub.log", args=("--tls-cert", str(pki.cert), "--tls-key", str(pki.key)))
    proc.start()
    try:
        env = cli_env(dsn, tmp_path, HUB_TLS_CERT=str(pki.cert), HUB_TLS_KEY=str(pki.key), HUB_PORT=str(proc.port),
                      HUB_TOKEN=_token(), SSL_CERT_FILE=str(pki.ca))
        await db.execute("INSERT INTO trades (symbol, side, quantity) VALUES ('TAILUSDT', 'BUY', 1)")
        tail = await spawn(env, "tail", "--topics", "trade_update", "--since", "0")
        try:
            assert tail.stdout is not None
            await read_line_until(tail.stdout, "TAILUSDT", within=20)
        finally:
            tail.kill()
            await tail.wait()
    finally:
        proc.terminate()
