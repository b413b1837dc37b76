"""nginx for the tests, running docs/nginx/zepix-hub.conf as written: only its placeholders filled in.

A foreground nginx of the test's own (its prefix, temp dirs, pid and logs under a temporary directory), on a
loopback port. Whether nginx is installed is the caller's question (tests/test_proxy.py, tests/test_browser.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.certs import Pki
from tests.hubs import HubProcess

NGINX = Path(os.environ.get("HUB_TEST_NGINX", "/usr/sbin/nginx"))
SITE = Path(__file__).resolve().parent.parent / "docs" / "nginx" / "zepix-hub.conf"
PLACEHOLDERS = ("ZEPIX_LISTEN", "ZEPIX_SERVER_NAME", "ZEPIX_TLS_CERT", "ZEPIX_TLS_KEY", "ZEPIX_HUB_1", "ZEPIX_HUB_2")


def site_config(**values: str) -> str:
    """docs/nginx/zepix-hub.conf with its placeholders filled in, as the envsubst line in it does; nothing else."""
    text = SITE.read_text()
    assert set(re.findall(r"\$\{(ZEPIX_\w+)\}", text)) == set(PLACEHOLDERS) == set(values)
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def nginx(tmp: Path, pki: Pki, hubs: list[HubProcess]) -> Iterator[int]:
    """nginx (foreground, its own prefix, temp dirs and logs under `tmp`) running the site file; yields its port."""
    port = free_port()
    tmp.mkdir()
    site = tmp / "zepix-hub.conf"
    site.write_text(site_config(ZEPIX_LISTEN=f"127.0.0.1:{port}", ZEPIX_SERVER_NAME="localhost",
                                ZEPIX_TLS_CERT=str(pki.cert), ZEPIX_TLS_KEY=str(pki.key),
                                ZEPIX_HUB_1=f"127.0.0.1:{hubs[0].port}", ZEPIX_HUB_2=f"127.0.0.1:{hubs[1].port}"))
    temps = "\n".join(f"    {kind}_temp_path {tmp}/{kind}_temp;"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # What Debian's /etc/nginx/nginx.conf provides around a site: the http block and the event loop. As root,
    # nginx would switch its workers to `nobody`, who cannot read pytest's private temp dirs.
    main = tmp / "nginx.conf"
    main.write_text(("user root;\n" if os.geteuid() == 0 else "") +
                    f"worker_processes 1;\nevents {{ worker_connections 256; }}\n"
                    f"http {{\n    access_log {tmp}/access.log;\n{temps}\n    include {site};\n}}\n")
    error_log = tmp / "error.log"
    command = [str(NGINX), "-p", str(tmp), "-e", str(error_log), "-c", str(main),
               "-g", f"daemon off; master_process on; pid {tmp}/nginx.pid; error_log {error_log} info;"]
    test = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert test.returncode == 0, test.stderr + error_log.read_text(errors="replace")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15  # hang guard
        while True:
            assert proc.poll() is None, error_log.read_text(errors="replace")[-3000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, error_log.read_text(errors="replace")[-3000:]
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()  # SIGTERM: fast shutdown of the master and its worker
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
