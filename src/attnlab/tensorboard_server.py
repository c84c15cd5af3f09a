"""A real TensorBoard server on a free local port, and its HTTP data API (what the web page itself asks for): used by
tests/test_tensorboard_server.py to check what a user will see, and by scripts/screenshots.py.

    with TensorBoardServer("outputs/2026-11-24/06-25-07", "--samples_per_plugin", "images=1000") as tb:
        tb.wait_until("/data/runs", lambda runs: runs, timeout=60)
        tb.get("/data/plugin/images/tags")
"""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# The tensorboard of this Python's environment (the venv's bin/), not whatever is first on PATH.
TENSORBOARD = Path(sys.executable).parent / "tensorboard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def images_path(tag: str, run: str = ".") -> str:
    """The data API path listing an image tag's frames: [{"step", "wall_time", "query"}, ...]."""
    return f"/data/plugin/images/images?{urllib.parse.urlencode({'run': run, 'tag': tag, 'sample': 0})}"


class TensorBoardServer:
    def __init__(self, logdir: str | Path, *flags: str, log: Path | None = None):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        command = [str(TENSORBOARD), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port), *flags]
        stderr = log.open("w") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)

    def get(self, path: str, body: dict | None = None):
        """The answer to `path`: JSON decoded, or bytes for an image; a POST with `body` as JSON where given (the
        hparams plugin takes its queries so)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            kind = response.headers.get_content_type()
        return raw if kind.startswith("image/") else json.loads(raw)

    def wait_until(self, path: str, ready, timeout: float):
        """Poll `path` every 0.25 s until ready(answer), and return that answer; after `timeout` seconds return the
        last answer (None if the server never answered), so the caller's check says what is missing. The server
        reads event files in the background after it starts listening, so data appear over a few seconds."""
        deadline, answer = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text()[-2000:] if self.log else ""
                raise RuntimeError(f"tensorboard exited with status {self.process.returncode}: {tail}")
            try:
                answer = self.get(path)
                if ready(answer):
                    return answer
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            time.sleep(0.25)
        return answer

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> "TensorBoardServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
