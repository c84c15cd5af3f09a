"""Runs of the scripts, each in a process of its own, without each paying torch's imports.

`python scripts/train.py ARGS` spends seconds of CPU importing torch and what Lightning imports before it checks
or trains anything. Here one server process, started once for the test session (the `script_runs` fixture of
conftest.py), makes those imports, then forks a child per run. The child goes to the run's directory and runs the
script as __main__ with its own sys.argv, stdin (empty), stdout and stderr, and exits as the interpreter exits at
the script's end. What a test reads of a run (exit code, output, the files it leaves) is the script's own; only
the import is not paid again. tests/test_bad_input.py checks that a run forked here prints and exits as one started
afresh.

Run as a file, this is the server: a JSON request per line on stdin, a JSON line of exit codes back on stdout."""

import atexit
import gc
import importlib
import importlib.util
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# What scripts/train.py imports: the seconds (torch, and what Lightning imports: torch._dynamo, scipy's signal
# through torchmetrics), then Hydra and the script's own first imports (a few tenths of a second more in every run).
# Not Lightning itself: it sets up its loggers by the handlers it finds on the root logger as it is imported, which
# the run's own logging config has set up by then (conf/hydra/job_logging).
PRELOAD = ("torch", "torch._dynamo", "scipy.signal", "torchmetrics", "hydra._internal.hydra", "attnlab.config",
           "attnlab.console", "attnlab.resume", "attnlab.signals", "attnlab.sweep", "attnlab.tasks")


class ScriptRuns:
    """The test side: the server, and run() to hand it runs."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD):
        self.server = subprocess.Popen([sys.executable, __file__, *preload], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)

    def run(self, script: Path, runs: list[list[str]], cwd: Path, parallel: int = 2,
            timeout: float = 300) -> list[subprocess.CompletedProcess]:
        """The results of `python script *args` in `cwd` for each args of `runs`, in that order, at most `parallel`
        of them running at once; a run still going after `timeout` seconds is killed (its code is then -9)."""
        with tempfile.TemporaryDirectory() as out:
            request = {"script": str(Path(script).resolve()), "runs": runs, "cwd": str(cwd), "out": out,
                       "parallel": parallel, "timeout": timeout}
            self.server.stdin.write(json.dumps(request) + "\n")
            self.server.stdin.flush()
            answered, _, _ = select.select([self.server.stdout], [], [], timeout + 60)
            line = self.server.stdout.readline() if answered else ""
            assert line, f"the script runs' server did not answer (exit code {self.server.poll()}): see its stderr"
            results = []
            for i, (args, code) in enumerate(zip(runs, json.loads(line))):
                stdout, stderr = (Path(out, f"{i}.{name}").read_text(errors="replace") for name in ("out", "err"))
                results.append(subprocess.CompletedProcess([sys.executable, str(script), *args], code, stdout, stderr))
            return results

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


def become(request: dict, i: int) -> None:
    """In the forked child: `python script *args` as run i of the request, then exit as the interpreter exits at the
    script's end: the code of its SystemExit (its message printed where it is one), 1 with the traceback for any
    other exception, once its other threads have ended and after the atexit handlers. Only the teardown of every
    module is left out (with torch imported, a second of CPU, and nothing the script prints or writes)."""
    os.chdir(request["cwd"])
    out = Path(request["out"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out / f"{i}.out", os.O_WRONLY | os.O_CREAT),
                            (2, out / f"{i}.err", os.O_WRONLY | os.O_CREAT)):
        file = os.open(path, flags)
        os.dup2(file, fd)
        os.close(file)
    script = request["script"]
    sys.argv = [script, *request["runs"][i]]
    sys.path[0] = str(Path(script).parent)  # where python puts a script's own directory
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) or stop.code is None else print(stop.code, file=sys.stderr) or 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # as the interpreter's exit: wait for the threads that are not daemons, then atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def serve_one(request: dict) -> list[int]:
    """Forks the request's runs, `parallel` at a time, and waits for them: their exit codes, in order."""
    codes, running, deadline = {}, {}, time.monotonic() + request["timeout"]
    pending = list(range(len(request["runs"])))
    while pending or running:
        while pending and len(running) < request["parallel"]:
            sys.stdout.flush()
            i = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                become(request, i)
            running[pid] = i
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        elif time.monotonic() > deadline:
            for pid in running:
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")  # then reaped as they end
        else:
            time.sleep(0.02)
    return [codes[i] for i in range(len(request["runs"]))]


def serve(preload: list[str]) -> None:
    for module in preload:
        if importlib.util.find_spec(module.partition(".")[0]):  # scipy: only with the [optuna] extra
            importlib.import_module(module)
    gc.freeze()  # what the imports made, out of the collector's reach in every child (as scripts/train.py does)
    for line in sys.stdin:
        # A fork copies only the thread that calls it: a lock another thread held would stay locked in the child.
        assert threading.active_count() == 1, threading.enumerate()
        print(json.dumps(serve_one(json.loads(line))), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1:])
