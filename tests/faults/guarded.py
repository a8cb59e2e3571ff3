"""``python -m tests.faults.guarded MODULE ARGS...``: run MODULE as ``__main__``, and
kill it when the test process that started it dies.

Fault tests start copiers, samplers and services as child processes; if the
test process itself dies (a crash, a CI timeout), they must not live on and
load the machine. A thread notices the parent changing (the child was
re-parented) and ends the process.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    module, sys.argv = sys.argv[1], sys.argv[1:]
    threading.Thread(target=_watch, args=(os.getppid(),), name="guard", daemon=True).start()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
