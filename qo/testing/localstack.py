"""LocalStack's S3, in process (no Docker), for tests: a second real S3 implementation.

LocalStack needs Python >= 3.13 and a few pins, so it lives in its own
virtualenv (``.venv-localstack``, built by ``.ci/run`` or
``infra/localstack/setup``). ``LocalStack`` starts
``python -m localstack.runtime.main`` from that virtualenv with only the S3
service, its hypercorn gateway bound to 127.0.0.1 on a free port, and its
state in a temporary directory; ``stop`` ends it (and only it).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-localstack"
HEALTH_PATH = "/_localstack/health"


def python() -> Path | None:
    """The LocalStack virtualenv's interpreter, if that virtualenv was built."""
    exe = VENV / "bin" / "python"
    return exe if exe.exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalStack:
    """One LocalStack process serving S3 on 127.0.0.1:``port``."""

    def __init__(self, exe: Path | None = None, port: int = 0) -> None:
        found = exe or python()
        if found is None:
            raise RuntimeError(f"no LocalStack virtualenv at {VENV}: run infra/localstack/setup")
        self.exe = found
        self.port = port or _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    def start(self, timeout: float = 90.0) -> Self:
        self._dir = tempfile.mkdtemp(prefix="qo-localstack-")
        env = dict(os.environ)
        env.update({
            "GATEWAY_SERVER": "hypercorn",
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "SERVICES": "s3",
            "DNS_ADDRESS": "0",
            "DISABLE_EVENTS": "1",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "LOCALSTACK_VOLUME_DIR": os.path.join(self._dir, "volume"),
            "FILESYSTEM_ROOT": os.path.join(self._dir, "fs"),
            "TMPDIR": os.path.join(self._dir, "tmp"),
        })
        for name in ("volume", "fs", "tmp"):
            os.makedirs(os.path.join(self._dir, name), exist_ok=True)
        log = open(os.path.join(self._dir, "localstack.log"), "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [str(self.exe), "-m", "localstack.runtime.main"], env=env, cwd=self._dir,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"LocalStack did not start on {self.endpoint_url}: {tail}")
            time.sleep(0.2)
        return self

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
        try:
            conn.request("GET", HEALTH_PATH)
            resp = conn.getresponse()
            if resp.status != 200:
                return False
            state = json.loads(resp.read()).get("services", {}).get("s3")
            return state in ("available", "running")
        except (OSError, ValueError):
            return False
        finally:
            conn.close()

    def log_tail(self, lines: int = 5) -> str:
        if self._dir is None:
            return ""
        try:
            text = Path(self._dir, "localstack.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # its own shutdown; SIGTERM is slower
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main() -> None:
    """``python -m qo.testing.localstack [PORT]``: serve LocalStack's S3 until Ctrl-C."""
    import sys

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 4566
    signal.signal(signal.SIGTERM, interrupt)  # stop LocalStack too, on SIGTERM as on Ctrl-C
    with LocalStack(port=port) as server:
        print(f"export AWS_ENDPOINT_URL={server.endpoint_url} AWS_ACCESS_KEY_ID=test "
              "AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1", flush=True)
        try:
            while server._proc is not None and server._proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
