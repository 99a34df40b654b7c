"""`python app.py` as a child process on a free loopback port, for the end-to-end tests and the serving bench:
started with the offline environment, waited for until the page answers, stopped afterwards."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from msolomon.settings import OFFLINE as _OFFLINE

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = dict(_OFFLINE)  # the environment msolomon.settings.process_environment sets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(cache_dir: Path, *args: str, log: Path | None = None, timeout: float = 240.0,
                threads: int = 1) -> Iterator[tuple[str, float]]:
    """Yields (URL, seconds until the page answered). `args` go to app.py after the port, threads and cache."""
    import httpx

    port = free_port()
    log = Path(log or Path(cache_dir).parent / f"app-{port}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--threads", str(threads), "--cache-dir",
           str(cache_dir), *args]
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **OFFLINE}, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited with {proc.returncode}: {log.read_text()[-3000:]}")
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"app.py did not answer within {timeout:.0f}s: {log.read_text()[-3000:]}")
                time.sleep(0.2)
            yield url, time.perf_counter() - t0
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
