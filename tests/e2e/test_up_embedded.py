"""`conveyor up` on a machine with nothing configured: embedded PostgreSQL and Redis start from
pip packages, migrations run, and a ping goes through to done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from app.embedded import find_free_port

pytestmark = pytest.mark.e2e


def test_up_without_urls_runs_everything_on_embedded_servers(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({"CONVEYOR_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"})
    port = find_free_port()
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "up",
            "--port",
            str(port),
            "--no-flower",
            "--concurrency",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("not ready: " + (tmp_path / "up.log").read_text()[-3000:])
        text = (tmp_path / "up.log").read_text()
        assert "starting embedded PostgreSQL Redis" in text
        # Development: `up` made an all-scopes key, printed it and saved it for the next runs.
        key = (tmp_path / "data" / "dev-api-key").read_text().strip()
        assert f"export CONVEYOR_API_KEY={key}" in text
        assert httpx.post(f"{base}/v1/pings", json={}, timeout=10).status_code == 401
        auth = {"authorization": f"Bearer {key}"}
        op = httpx.post(
            f"{base}/v1/pings", json={"message": "laptop"}, headers=auth, timeout=10
        ).json()
        op_id = op["name"].removeprefix("operations/")
        done = httpx.post(
            f"{base}/v1/operations/{op_id}:wait", json={"timeout": 30}, headers=auth, timeout=40
        ).json()
        assert done["metadata"]["state"] == "SUCCEEDED", done
        assert done["response"]["reply"] == "pong: laptop"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
        log.close()
    assert proc.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]
