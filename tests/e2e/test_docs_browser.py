"""Swagger UI and ReDoc work offline: a real headless Chromium (Debian's ``chromium``) renders
``/docs`` with every operation listed and ``/redoc`` with the operations in its menu, while every
request to a host other than localhost goes to a recording proxy, which must see none.

The proxy is a positive control too: a page that does load something from elsewhere shows up in
its record, so an empty record means "nothing was requested", not "nothing was recorded".
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from app.runtime.embedded import find_free_port
from tests.support.procs import API_LISTENING

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Chromium's own services (updates, sign-in, autofill, clock): the browser calls them whatever the
# page is. Named one by one: fonts.googleapis.com or a CDN requested by a page still fail the test.
BROWSER_HOSTS = (
    "clients2.google.com",
    "update.googleapis.com",
    "accounts.google.com",
    "content-autofill.googleapis.com",
    "optimizationguide-pa.googleapis.com",
    "safebrowsingohttpgateway.googleapis.com",
    "www.google.com",
)


def _host(request_line: str) -> str:
    target = request_line.split(" ")[1] if " " in request_line else request_line
    return (urllib.parse.urlsplit(target).hostname or target.split(":", 1)[0]).lower()


class RecordingProxy:
    """Accepts connections, records each request line (``CONNECT host:443 ...``), answers 502."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    line = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                    self.requests.append(line)
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    recording = RecordingProxy()
    yield recording
    recording.close()


def dump_dom(url: str, proxy: RecordingProxy, profile: pathlib.Path) -> str:
    """The DOM after the page's scripts ran (virtual time: no fixed sleep)."""
    assert CHROMIUM
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--no-first-run",
            f"--user-data-dir={profile}",
            # Everything but loopback goes through the recording proxy (Chromium never proxies
            # loopback), so any request to the internet is seen there.
            f"--proxy-server=http://127.0.0.1:{proxy.port}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_swagger_ui_and_redoc_render_in_a_browser_without_the_internet(
    spawn, proxy: RecordingProxy, tmp_path: pathlib.Path
) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("needs chromium (apt-get install chromium; .ci/run installs it)")
    # Positive control: an external script is requested through the proxy, and recorded.
    page = tmp_path / "control.html"
    page.write_text('<script src="https://cdn.example.com/x.js"></script><p>control</p>')
    dump_dom(page.as_uri(), proxy, tmp_path / "profile-control")
    assert "cdn.example.com" in {_host(line) for line in proxy.requests}, proxy.requests
    proxy.requests.clear()

    port = find_free_port()
    api = spawn("api", "--host", "127.0.0.1", "--port", str(port))
    api.wait_for_log(API_LISTENING, timeout=60)
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as response:
        spec = json.load(response)
    operation_ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    paths = set(spec["paths"])
    assert len(paths) > 10

    docs = dump_dom(f"{base}/docs", proxy, tmp_path / "profile-docs")
    shown = {
        urllib.parse.unquote(part.split('"', 1)[0])
        for part in docs.split('class="opblock-summary-path" data-path="')[1:]
    }
    assert shown == paths, f"missing in Swagger UI: {sorted(paths - shown)}"

    redoc = dump_dom(f"{base}/redoc", proxy, tmp_path / "profile-redoc")
    assert 'class="api-content"' in redoc or "api-content" in redoc, redoc[:2000]
    menu = {op for op in operation_ids if f"operation/{op}" in redoc}
    assert menu == operation_ids, f"missing in ReDoc: {sorted(operation_ids - menu)}"

    from_pages = [line for line in proxy.requests if _host(line) not in BROWSER_HOSTS]
    assert from_pages == [], f"the docs pages reached beyond localhost: {from_pages}"
