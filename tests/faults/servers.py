"""Fault injection on the local stack's servers: kill -9, restart, Redis files."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from toolkit.runtime.stack import LocalStack


def local_stack() -> LocalStack:
    if os.environ.get("KCT_KAFKA_BOOTSTRAP"):
        raise AssertionError("fault tests kill the local stack's servers: run them on it")
    return LocalStack()


def server_pid(name: str) -> int:
    status = local_stack().status().services[name]
    assert status.pid is not None and status.running, f"{name} is not running"
    return status.pid


def kill_9(name: str) -> None:
    """SIGKILL the server and wait until its process is gone."""
    pid = server_pid(name)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def restart_stack() -> None:
    """Start whatever is down again (``kct stack up`` is idempotent)."""
    local_stack().up()


def redis_data_dir() -> Path:
    return local_stack().layout.data / "redis"


def wait_for_redis(url: str, timeout: float = 30) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
    finally:
        client.close()
