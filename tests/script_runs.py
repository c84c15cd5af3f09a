"""Runs of the scripts, each in a process of its own, without each paying torch's imports.

`python scripts/train.py ARGS` spends seconds of CPU importing torch and what Lightning imports before it checks
or trains anything. Here one server process, started once for the test session (the `script_runs` fixture of
conftest.py), makes those imports, then forks a child per run. The child goes to the run's directory and runs the
script as __main__ with its own sys.argv, stdin (empty), stdout and stderr, and exits as the interpreter exits at
the script's end. What a test reads of a run (exit code, output, the files it leaves) is the script's own; only
the import is not paid again. tests/test_bad_input.py checks that a run forked here prints and exits as one started
afresh.

ScriptRuns.run hands the server runs and waits for them; ScriptRuns.start starts one and returns at once, with its
pid (for the signals a test sends it) and what a subprocess.Popen offers for waiting on it.

Run as a file, this is the server: a JSON request per line on stdin, a JSON answer per line back on stdout."""

import atexit
import contextlib
import gc
import importlib
import importlib.util
import json
import os
import resource
import runpy
import select
import shutil
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
    """The test side: the server, run() and start() to hand it runs. Safe to use from several threads at once."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD):
        self.server = subprocess.Popen([sys.executable, __file__, *preload], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()  # one request at a time, each with its answer

    def ask(self, request: dict, timeout: float):
        with self.lock:
            self.server.stdin.write(json.dumps(request) + "\n")
            self.server.stdin.flush()
            answered, _, _ = select.select([self.server.stdout], [], [], timeout)
            line = self.server.stdout.readline() if answered else ""
        assert line, f"the script runs' server did not answer (exit code {self.server.poll()}): see its stderr"
        return json.loads(line)

    def run(self, script: Path, runs: list[list[str]], cwd: Path, parallel: int = 2,
            timeout: float = 300) -> list[subprocess.CompletedProcess]:
        """The results of `python script *args` in `cwd` for each args of `runs`, in that order, at most `parallel`
        of them running at once; a run still going after `timeout` seconds is killed (its code is then -9). The
        server serves no other request meanwhile (another thread's start() or poll waits)."""
        with tempfile.TemporaryDirectory() as out:
            request = {**where(script, cwd), "runs": runs, "out": out, "parallel": parallel, "timeout": timeout}
            codes = self.ask({"run": request}, timeout + 60)
            return [Started.result(out, i, script, args, code) for i, (args, code) in enumerate(zip(runs, codes))]

    def start(self, script: Path, args: list[str], cwd: Path, limits: dict[str, int] | None = None,
              new_session: bool = False) -> "Started":
        """`python script *args` in `cwd`, started: a Popen-like handle on it. limits: resource limits it starts
        with, {"RLIMIT_FSIZE": 60_000} (soft and hard), as a preexec_fn would set them; new_session: it leads a
        process group of its own (its pid the group's), as Popen(start_new_session=True)."""
        out = tempfile.mkdtemp(prefix="script_run_")
        request = {**where(script, cwd), "runs": [args], "out": out, "limits": limits or {}, "new_session": new_session}
        return Started(self, self.ask({"start": request}, 60), out, script, args)

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


def where(script: Path, cwd: Path) -> dict:
    """The script (a path relative to cwd, or absolute) and the directory it runs in, for a request; the path as
    given is the run's sys.argv[0], as python sets it (a run's "Resume with:" line shows it)."""
    return {"script": str((Path(cwd) / script).resolve()), "argv0": str(script), "cwd": str(cwd)}


class Started:
    """A run that ScriptRuns.start started, as a subprocess.Popen of it with stdout and stderr piped (text): pid,
    returncode, poll(), send_signal(), wait(), communicate(). It is the server's child, not this process's."""

    def __init__(self, runs: ScriptRuns, pid: int, out: str, script: Path, args: list[str]):
        self.runs, self.pid, self.out, self.returncode = runs, pid, out, None
        self.args = [sys.executable, str(script), *args]

    @staticmethod
    def result(out: str, i: int, script: Path, args: list[str], code: int) -> subprocess.CompletedProcess:
        stdout, stderr = (Path(out, f"{i}.{name}").read_text(errors="replace") for name in ("out", "err"))
        return subprocess.CompletedProcess([sys.executable, str(script), *args], code, stdout, stderr)

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) as far as it has written them, before communicate()."""
        done = self.result(self.out, 0, Path(self.args[1]), self.args[2:], self.returncode)
        return done.stdout, done.stderr

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.runs.ask({"poll": self.pid}, 60)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # as Popen: not to a pid the run no longer holds
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def communicate(self, timeout: float) -> tuple[str, str]:
        """(stdout, stderr) once it has ended; its files are then removed. A run still going after `timeout`
        seconds is killed (SIGKILL) and TimeoutExpired raised, where Popen.communicate would leave it running."""
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.wait(60)
            raise
        finally:
            if self.returncode is not None:
                done = self.output()
                shutil.rmtree(self.out, ignore_errors=True)
        return done

    def stop_group(self, training, within: float, timeout: float) -> tuple[str, str, list[str], float]:
        """SIGTERM to the run's process group (a run started with new_session=True: a sweep a user started from a
        shell, and its workers) once training() says its jobs are training, as a user's kill or a scheduler sends
        it: (stdout, stderr, the group's processes still running 20 s after the signal, the seconds waited for
        them). Whatever is left is killed (SIGKILL) before it returns."""
        try:
            deadline = time.monotonic() + within
            while not training():
                assert self.poll() is None and time.monotonic() < deadline, self.output()[1][-3000:]
                time.sleep(0.2)
            os.killpg(self.pid, signal.SIGTERM)
            signalled = time.monotonic()
            out, err = self.communicate(timeout)
            while alive(self.pid) and time.monotonic() < signalled + 20:
                time.sleep(0.2)
            return out, err, alive(self.pid), time.monotonic() - signalled
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)


def alive(pgid: int) -> list[str]:
    """The processes of process group `pgid` that have not ended (a zombie has), as `pid command`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            command, _, rest = stat.read_text().rpartition(")")
            state, _ppid, group = rest.split()[:3]
        except (OSError, ValueError):  # ended while being read
            continue
        if int(group) == pgid and state != "Z":
            found.append(f"{stat.parent.name} {command.partition('(')[2]}")
    return found


def become(request: dict, i: int) -> None:
    """In the forked child: `python script *args` as run i of the request, then exit as the interpreter exits at the
    script's end: the code of its SystemExit (its message printed where it is one), 1 with the traceback for any
    other exception, once its other threads have ended and after the atexit handlers. Only the teardown of every
    module is left out (with torch imported, a second of CPU, and nothing the script prints or writes)."""
    if request.get("new_session"):
        os.setsid()
    for name, limit in request.get("limits", {}).items():
        resource.setrlimit(getattr(resource, name), (limit, limit))
    os.chdir(request["cwd"])
    out = Path(request["out"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out / f"{i}.out", os.O_WRONLY | os.O_CREAT),
                            (2, out / f"{i}.err", os.O_WRONLY | os.O_CREAT)):
        file = os.open(path, flags)
        os.dup2(file, fd)
        os.close(file)
    sys.argv = [request["argv0"], *request["runs"][i]]
    sys.path[0] = str(Path(request["script"]).parent)  # where python puts a script's own directory
    try:
        # By the path as given (relative to cwd, where it is): runpy makes it sys.argv[0], as python does (its
        # __file__ too, where python would make that one absolute).
        runpy.run_path(request["argv0"], run_name="__main__")
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
        ended = [(pid, status) for pid, status in map(waited, running) if pid]  # (not the runs start() started)
        for pid, status in ended:
            codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        if ended:
            continue
        if time.monotonic() > deadline:
            for pid in running:
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")  # then reaped as they end
        else:
            time.sleep(0.02)
    return [codes[i] for i in range(len(request["runs"]))]


def waited(pid: int) -> tuple[int, int]:
    return os.waitpid(pid, os.WNOHANG)


def start_one(request: dict) -> int:
    """Forks the request's one run and returns its pid at once."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        become(request, 0)
    return pid


def poll_one(pid: int) -> int | None:
    """The exit code of a run start_one started, once it has ended (then reaped), or None."""
    ended, status = waited(pid)
    return os.waitstatus_to_exitcode(status) if ended else None


def serve(preload: list[str]) -> None:
    for module in preload:
        if importlib.util.find_spec(module.partition(".")[0]):  # scipy: only with the [optuna] extra
            importlib.import_module(module)
    gc.freeze()  # what the imports made, out of the collector's reach in every child (as scripts/train.py does)
    for line in sys.stdin:
        # A fork copies only the thread that calls it: a lock another thread held would stay locked in the child.
        assert threading.active_count() == 1, threading.enumerate()
        request = json.loads(line)
        if "run" in request:
            answer = serve_one(request["run"])
        elif "start" in request:
            answer = start_one(request["start"])
        else:
            answer = poll_one(request["poll"])
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1:])
