"""How fast Ctrl-C stops `radsentry demo` in its initial-model stage (issue 22).

Starts `radsentry demo --until initial-model` in a new data dir (or ``--data-dir``), waits for
its "training cxr-lesion v1" line plus ``--delay`` seconds (the cohort renders first, then the
model trains: about 60 s of rendering on a loaded 2-core machine), sends SIGINT to its process
group as a terminal's Ctrl-C does, and prints the seconds from the signal to the demo's
"stopped during" line and to its exit, with the exit status.

    python -m benchmarks.demo_stop --delay 3     # stopped while the cohort renders
    python -m benchmarks.demo_stop --delay 120   # stopped while the model trains
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from monitor.service.broker import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=3.0)
    parser.add_argument("--data-dir", default=None, help="work folder (default: a new one)")
    args = parser.parse_args()
    work = args.data_dir or tempfile.mkdtemp(prefix="demo-stop-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
    env |= {"HOME": work, "RADSENTRY_API__PORT": str(free_port())}
    command = [sys.executable, "-m", "monitor.service.cli", "demo", "--until", "initial-model"]
    demo = subprocess.Popen(
        command,
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    training, stopped = threading.Event(), threading.Event()
    said: dict[str, float] = {}

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            if "training cxr-lesion v1" in line:
                training.set()
            if "stopped during" in line:
                said["at"] = time.monotonic()
                stopped.set()

    threading.Thread(target=read, daemon=True).start()
    training.wait()
    time.sleep(args.delay)
    os.killpg(demo.pid, signal.SIGINT)
    sent = time.monotonic()
    code = demo.wait()
    exited = time.monotonic() - sent
    stopped.wait(5)
    line = f"{said['at'] - sent:.2f} s" if "at" in said else "never"
    print(f"'stopped during' line: {line}; exit status {code} after {exited:.2f} s ({work})")


if __name__ == "__main__":
    main()
