"""Sidecar processes for the tests, and a plain HTTP client (what a service in
another language would use): ``kct sidecar`` runs as a child process on a
free port of 127.0.0.1, configured by a kct.yaml written for the test."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import Endpoints

ROOT = Path(__file__).resolve().parents[2]


def connections(endpoints: Endpoints, lock_root: str, deployment: str = "test") -> str:
    """The connection part of a kct.yaml for the test stack."""
    return (
        "version: 1\n"
        f"deployment: {deployment}\n"
        f"kafka: {{bootstrap_servers: '{endpoints.kafka_bootstrap}'}}\n"
        f"zookeeper: {{hosts: '{endpoints.zookeeper_hosts}', lock_root: '{lock_root}',"
        " session_timeout: 6.0}\n"
        f"redis: {{url: '{endpoints.redis_url}'}}\n"
    )


class Response:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.raw = body
        self.headers = headers

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


class SidecarProcess:
    """``kct sidecar --config <file> --listen 127.0.0.1:0`` as a child process."""

    def __init__(
        self,
        directory: Path,
        config: str,
        name: str = "sidecar",
        env: dict[str, str] | None = None,
        port: int = 0,
    ) -> None:
        self.listen = f"127.0.0.1:{port}"
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / f"{name}.yaml"
        self.config_path.write_text(config)
        self.log_path = directory / f"{name}.log"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.port = port

    def start(self, timeout: float = 30.0) -> SidecarProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "toolkit.runtime.cli",
                "sidecar",
                "--config",
                str(self.config_path),
                "--listen",
                self.listen,
            ],
            stdout=log,
            stderr=log,
            env=self.env,
            cwd=ROOT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(
                rb"listening on http://127\.0\.0\.1:(\d+)", self.log_path.read_bytes()
            )
            if found:
                self.port = int(found.group(1))
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"sidecar did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            connection.request(
                method,
                path,
                body=data,
                headers={"Content-Type": "application/json", **(headers or {})},
            )
            answer = connection.getresponse()
            return Response(answer.status, answer.read(), dict(answer.getheaders()))
        finally:
            connection.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: Response | None = None
        while time.monotonic() < deadline:
            try:
                last = self.call("GET", "/readyz")
                if last.status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready: {last and last.raw!r}\n{self.log_text()}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def free_port() -> int:
    """A port nothing listens on right now (for processes that must know it up front)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
