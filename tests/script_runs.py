"""Many runs of one script, each in a process of its own, for the start-up cost of one.

`python scripts/train.py ARGS` pays torch's and Lightning's imports (seconds of CPU) in every process. Here one
server process makes those imports once, then forks a child per run. The child runs the script as __main__ with
its own sys.argv, stdout and stderr, and ends the way the script ends it: its exit code, its atexit handlers, a
traceback for an uncaught exception. What a test reads of each run (exit code, output, the files it leaves) is
the script's own; what it does not pay is the import. tests/test_bad_input.py checks that a run forked here prints
and exits as one started afresh.

Run as a file, this is the server: a JSON request on stdin, each run's output in files of the request's folder."""

import atexit
import gc
import importlib
import importlib.util
import json
import os
import runpy
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


# What scripts/train.py imports that takes the seconds (torch, and what Lightning imports: torch._dynamo, scipy's
# signal through torchmetrics), not Lightning itself: it sets up its loggers by the handlers it finds on the root
# logger as it is imported, which the run's own logging config has set up by then (conf/hydra/job_logging).
PRELOAD = ("torch", "torch._dynamo", "scipy.signal", "torchmetrics")


def run_all(script: Path, runs: list[list[str]], cwd: Path, preload: tuple[str, ...] = PRELOAD, parallel: int = 2,
            timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """The results of `python script *args` for each args of `runs`, in that order, at most `parallel` running at
    once, all forked from one process that has imported the modules of `preload` (the script imports them too)."""
    with tempfile.TemporaryDirectory() as out:
        request = {"script": str(Path(script).resolve()), "runs": runs, "preload": list(preload), "out": out,
                   "parallel": parallel}
        server = subprocess.run([sys.executable, __file__], input=json.dumps(request), cwd=cwd, capture_output=True,
                                text=True, timeout=timeout)
        assert server.returncode == 0, server.stderr[-3000:]
        codes = json.loads(Path(out, "codes.json").read_text())
        read = lambda i, name: Path(out, f"{i}.{name}").read_text(errors="replace")  # noqa: E731
        return [subprocess.CompletedProcess([sys.executable, str(script), *args], code, read(i, "out"), read(i, "err"))
                for i, (args, code) in enumerate(zip(runs, codes))]


def become(script: str, args: list[str], stdout: Path, stderr: Path) -> None:
    """In the forked child: `python script *args`, writing into stdout and stderr, then exit as the interpreter
    exits at the script's end: the code of its SystemExit (its message printed where it is one), 1 with the
    traceback for any other exception, after the atexit handlers. Only the teardown of every module is left out
    (with torch and Lightning imported, a second of CPU, and nothing the script prints or writes)."""
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).parent)  # where python puts a script's own directory
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) or stop.code is None else print(stop.code, file=sys.stderr) or 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def serve(request: dict) -> None:
    for module in request["preload"]:
        if importlib.util.find_spec(module.partition(".")[0]):  # scipy: only with the [optuna] extra
            importlib.import_module(module)
    gc.freeze()  # what the imports made, out of the collector's reach in every child (as scripts/train.py does)
    # A fork copies only the thread that calls it: a lock another thread held would stay locked in the child.
    assert threading.active_count() == 1, threading.enumerate()
    out, codes, running = Path(request["out"]), {}, {}

    def reap():
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)

    for i, args in enumerate(request["runs"]):
        if len(running) >= request["parallel"]:
            reap()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            become(request["script"], args, out / f"{i}.out", out / f"{i}.err")
        running[pid] = i
    while running:
        reap()
    (out / "codes.json").write_text(json.dumps([codes[i] for i in range(len(request["runs"]))]))


if __name__ == "__main__":
    serve(json.load(sys.stdin))
