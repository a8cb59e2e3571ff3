"""Provisioning of the local stack's programs: Kafka jars, the Jaeger binary, Debian packages.

Guarantees:

* Downloads and builds land in the cache directory (``~/.cache/kct`` or
  ``$KCT_CACHE_DIR``) under a temporary name and are renamed into place only when
  complete, so an interrupted ``mvn`` or ``go build`` is never mistaken for a
  finished one; the next ``up`` simply starts again.
* Each step runs only when its result is missing; a warm cache costs a few
  ``stat`` calls.
* ``apt-get update``/``install`` run at most once per process, only as root.

Failure modes: a missing tool (java, mvn, go, apt-get) or a failed command raises
:class:`~toolkit.errors.StackError` naming the tool and, for commands, the tail
of their output.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from toolkit.errors import StackError

KAFKA_VERSION = "4.3.1"
JAEGER_VERSION = "v1.76.0"
JAEGER_PACKAGE = "github.com/jaegertracing/jaeger/cmd/jaeger"

REDIS_SERVER = Path("/usr/bin/redis-server")
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
KCAT = Path("/usr/bin/kcat")
# The dashboard's browser test: Chromium driven by Selenium through chromedriver.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DEBIAN_FILES = (REDIS_SERVER, ZOOKEEPER_JAR, KCAT, CHROMIUM, CHROMEDRIVER)
# slf4j binding from libslf4j-java (a dependency of the zookeeper package): without
# one, ZooKeeper's log goes nowhere.
ZOOKEEPER_SLF4J_BINDING = Path("/usr/share/java/slf4j-simple.jar")
# kcat: the fault tests write records that Python clients refuse to write.
DEBIAN_PACKAGES = ("zookeeper", "redis-server", "kcat", "chromium", "chromium-driver")

log = logging.getLogger(__name__)

_apt_lock = threading.Lock()
_apt_done = False


def resources_dir() -> Path:
    """The stack's static files: packaged ``_local`` first, then the repo's ``docker/local``."""
    packaged = Path(__file__).parents[1] / "_local"  # toolkit/runtime/_local
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[3] / "docker" / "local"
    if repo.is_dir():
        return repo
    raise StackError(
        "stack resources not found (neither the packaged toolkit/runtime/_local "
        "nor the repository's docker/local)",
        path=str(packaged),
    )


def default_cache_dir() -> Path:
    env = os.environ.get("KCT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kct"


def require_tool(name: str, purpose: str) -> str:
    """Absolute path of ``name`` on PATH, or a StackError saying what to install."""
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name!r} not found on PATH; it is needed to {purpose}", tool=name)
    return found


def _run(argv: Sequence[str], *, cwd: Path, what: str, env: dict[str, str] | None = None) -> None:
    try:
        result = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise StackError(f"could not run {argv[0]} to {what}: {exc}", tool=argv[0]) from exc
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise StackError(
            f"{what} failed (exit code {result.returncode}):\n{output}",
            tool=Path(argv[0]).name,
        )


def _tmp_sibling(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")


def kafka_libs(cache_dir: Path) -> Path:
    """Directory holding every jar the broker needs; resolved with Maven when missing."""
    libs = cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        return libs
    mvn = require_tool("mvn", f"download Apache Kafka {KAFKA_VERSION} from Maven Central")
    pom = resources_dir() / "kafka" / "pom.xml"
    libs.parent.mkdir(parents=True, exist_ok=True)
    log.info("kafka: resolving Apache Kafka %s jars with Maven into %s", KAFKA_VERSION, libs)
    staging = _tmp_sibling(libs)
    # Maven runs in a scratch copy of the pom: the installed package may be read-only.
    with tempfile.TemporaryDirectory(prefix="kct-mvn-") as scratch:
        shutil.copy2(pom, Path(scratch) / "pom.xml")
        try:
            _run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={staging}",
                ],
                cwd=Path(scratch),
                what=f"resolving Apache Kafka {KAFKA_VERSION} with Maven",
            )
            if not (staging / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
                raise StackError(
                    f"Maven finished but kafka_2.13-{KAFKA_VERSION}.jar is missing",
                    path=str(staging),
                )
            if libs.exists():  # a stale, incomplete directory from an older layout
                shutil.rmtree(libs)
            os.rename(staging, libs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return libs


def jaeger_binary(cache_dir: Path) -> Path:
    """Path of the Jaeger binary; built with ``go build`` from the module proxy when missing."""
    binary = cache_dir / f"jaeger-{JAEGER_VERSION}" / "jaeger"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = require_tool("go", f"build Jaeger {JAEGER_VERSION} from the Go module proxy")
    module = resources_dir() / "jaeger"
    binary.parent.mkdir(parents=True, exist_ok=True)
    log.info(
        "jaeger: building Jaeger %s with go build into %s (minutes on a cold Go cache)",
        JAEGER_VERSION,
        binary,
    )
    staging = _tmp_sibling(binary)
    with tempfile.TemporaryDirectory(prefix="kct-go-") as scratch:
        for name in ("go.mod", "go.sum"):
            shutil.copy2(module / name, Path(scratch) / name)
        try:
            _run(
                [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(staging), JAEGER_PACKAGE],
                cwd=Path(scratch),
                what=f"building Jaeger {JAEGER_VERSION} with go build",
                # go.sum pins every module: refuse to edit it, fail instead.
                env={**os.environ, "GOFLAGS": "-mod=readonly"},
            )
            os.rename(staging, binary)
        finally:
            staging.unlink(missing_ok=True)
    return binary


def ensure_debian_packages() -> None:
    """Make sure redis-server, ZooKeeper, kcat and Chromium (with chromedriver, for the
    dashboard's browser test) are installed; apt-get them when root."""
    global _apt_done  # noqa: PLW0603 - once per process, shared by two services
    with _apt_lock:
        if all(path.is_file() for path in DEBIAN_FILES):
            return
        missing = " ".join(DEBIAN_PACKAGES)
        if _apt_done:
            raise StackError(f"apt-get install {missing} ran but the servers are still missing")
        if os.geteuid() != 0:
            raise StackError(
                f"ZooKeeper, Redis, kcat or Chromium is not installed; run: sudo apt-get install "
                f"--no-install-recommends {missing}",
                tool="apt-get",
            )
        apt = require_tool("apt-get", f"install the Debian packages {missing}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _apt_done = True
        log.info("installing Debian packages: %s", missing)
        _run([apt, "update"], cwd=Path("/"), what="apt-get update", env=env)
        _run(
            [apt, "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES],
            cwd=Path("/"),
            what=f"apt-get install {missing}",
            env=env,
        )
        if not (REDIS_SERVER.is_file() and ZOOKEEPER_JAR.is_file()):
            raise StackError(f"apt-get install {missing} succeeded but the servers are missing")
