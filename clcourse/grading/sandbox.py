"""Start a submission's worker alone: own folders, no secrets, resource limits, nothing left behind.

On Linux with util-linux's ``unshare`` and ``setpriv`` (as root, or through a user namespace otherwise):

* a **network namespace** with nothing in it: no network at all;
* a **PID namespace**: the worker cannot see or signal any process outside it, and when the worker's
  namespace ends, the kernel kills every process in it, detached (``setsid``, double fork) or not;
* a **mount namespace** in which every mount is read-only except the worker's own folder (its working and
  temporary folder) and ``/dev/shm``, each a fresh tmpfs of ``file_mb``; the other submissions, the reports
  and the seed file are hidden behind ``/dev/null``;
* all capabilities dropped, ``no_new_privs`` set, its own session inside the namespace (as its init, it
  cannot be killed from inside: ``kill(0)``, ``killpg`` and ``kill(-1)`` reach nothing outside, and no process);
* limits: ``RLIMIT_DATA`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, no core files; the number of processes
  with a ``pids`` cgroup where one can be created (root), else ``RLIMIT_NPROC`` (not enforced for root), and
  memory with a ``memory`` cgroup too where available.

Elsewhere (macOS, or Linux without those tools) the worker runs in a fresh temporary folder in its own
session with the rlimits the platform enforces, and its process group is killed at the end: a process that
leaves the group (``setsid``) survives it, and files the grading user can read stay readable.
:func:`isolation` says which case applies.
"""

from __future__ import annotations

import functools
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import clcourse
from clcourse.grading import wire


MIN_MEMORY_MB = 1024


@dataclass(frozen=True)
class Limits:
    """Resources one submission's worker may use (flags of ``clcourse grade``)."""

    memory_mb: int = 4096  # RLIMIT_DATA and the memory cgroup; importing torch needs about 1 GiB
    cpu_seconds: int = 900
    file_mb: int = 64  # the largest file it may write, and the size of each of its tmpfs
    processes: int = 64
    output_kb: int = 64  # stdout and stderr kept for the report; the rest is read and dropped

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"limit {name} must be a positive integer, got {value!r}")
        if self.memory_mb < MIN_MEMORY_MB:
            raise ValueError(f"limit memory_mb must be at least {MIN_MEMORY_MB}: the worker imports torch, which "
                             f"needs about 1 GiB (measured: 768 MiB is not enough), got {self.memory_mb}")


ISOLATION_VARIABLE = "CLCOURSE_GRADING_ISOLATION"


@functools.cache
def isolation() -> str:
    """``"namespaces"`` where the sandbox described above is available, else ``"process group"``.

    ``CLCOURSE_GRADING_ISOLATION=process-group`` forces the weaker mode (to compare, or where the namespaces
    misbehave).
    """
    if os.environ.get(ISOLATION_VARIABLE) == "process-group":
        return "process group"
    if sys.platform != "linux" or not (shutil.which("unshare") and shutil.which("setpriv")):
        return "process group"
    probe = _unshare_prefix() + ["sh", "-c", "mount -t tmpfs -o size=1m tmpfs /tmp && setpriv --bounding-set=-all "
                                             "--inh-caps=-all --no-new-privs true"]
    try:
        ok = subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return "namespaces" if ok else "process group"


def _unshare_prefix() -> list[str]:
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", *user, "--fork", "--pid", "--kill-child", "--mount-proc", "--mount", "--net", "--"]


def _sandbox_script(folder: str, hide: list[str], file_mb: int) -> str:
    """The shell run as root of the new namespaces before the worker: read-only mounts, tmpfs, hidden files."""
    size = f"size={file_mb}m,mode=1777"
    lines = ["set -e", "mount --make-rprivate /",
             "awk '{print $2}' /proc/self/mounts | sort -u | while read -r m; do "
             "mount -o remount,bind,ro \"$(printf '%b' \"$m\")\" 2>/dev/null || true; done",
             f"mount -t tmpfs -o {size} tmpfs {shlex.quote(folder)}",
             f"if [ -d /dev/shm ]; then mount -t tmpfs -o {size} tmpfs /dev/shm; fi"]
    lines += [f"if [ -e {shlex.quote(p)} ]; then mount --bind /dev/null {shlex.quote(p)}; fi" for p in hide]
    lines += [f"cd {shlex.quote(folder)}", 'exec setsid setpriv --bounding-set=-all --inh-caps=-all --no-new-privs "$@"']
    return "\n".join(lines)


class _Cgroups:
    """A pids (and memory) cgroup v1 for one worker, where this process may create one; else nothing."""

    def __init__(self, limits: Limits) -> None:
        self.dirs: dict[str, Path] = {}
        if sys.platform != "linux" or os.geteuid() != 0:
            return
        name = f"clcourse-grading-{os.getpid()}-{time.monotonic_ns()}"
        wanted = {"pids": {"pids.max": str(limits.processes)},
                  "memory": {"memory.limit_in_bytes": str(limits.memory_mb * 2**20)}}
        for controller, settings in wanted.items():
            base = _cgroup_v1_dir(controller)
            if base is None:
                continue
            path = base / name
            try:
                path.mkdir()
                for key, value in settings.items():
                    (path / key).write_text(value)
            except OSError:
                self._remove(path)
                continue
            self.dirs[controller] = path

    def join(self) -> None:
        """Move the calling process into the cgroups (run in the child before exec)."""
        for path in self.dirs.values():
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def kill_all(self) -> None:
        for path in self.dirs.values():
            for _ in range(50):
                try:
                    pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.02)
            self._remove(path)

    @staticmethod
    def _remove(path: Path) -> None:
        for _ in range(50):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def _cgroup_v1_dir(controller: str) -> Path | None:
    """This process's own cgroup directory for a v1 controller, if that hierarchy is mounted."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mount = next((line.split()[1] for line in mounts
                  if line.split()[2] == "cgroup" and controller in line.split()[3].split(",")), None)
    path = next((line.split(":", 2)[2] for line in own if controller in line.split(":", 2)[1].split(",")), None)
    if mount is None or path is None:
        return None
    return Path(mount) / path.lstrip("/")


@dataclass
class Worker:
    """One running worker: ``request()`` sends a message and waits for the reply.

    Args:
        limits: its resources.
        hide: files it must not read (other submissions, reports, the seed file).
    """

    limits: Limits
    hide: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._output = bytearray()
        self._cgroups = _Cgroups(self.limits)
        self._folder = tempfile.mkdtemp(prefix="clcourse-submission-")
        request_read, self._request_write = os.pipe()
        self._reply_read, reply_write = os.pipe()
        command = [sys.executable, "-m", "clcourse.grading.worker", str(request_read), str(reply_write)]
        if isolation() == "namespaces":
            command = _unshare_prefix() + ["sh", "-c", _sandbox_script(self._folder, self.hide, self.limits.file_mb),
                                           "sandbox"] + command
        self.process = subprocess.Popen(
            command, cwd=self._folder, env=_worker_env(self._folder), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(request_read, reply_write),
            start_new_session=True, preexec_fn=self._in_child)
        os.close(request_read)
        os.close(reply_write)
        self._requests = os.fdopen(self._request_write, "wb")
        self._replies = os.fdopen(self._reply_read, "rb")
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _in_child(self) -> None:
        """Limits, applied in the forked child before it runs anything else (inherited by all it starts)."""
        memory = self.limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (self.limits.cpu_seconds, self.limits.cpu_seconds))
        size = self.limits.file_mb * 2**20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if os.geteuid() != 0:
            running = _processes_of(os.getuid())
            cap = running + self.limits.processes
            resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))
        self._cgroups.join()
        die_with_parent()  # a supervisor that dies takes its worker with it

    def _drain(self) -> None:
        """Keep the first ``output_kb`` of the worker's output; read and drop the rest (it must never block)."""
        cap = self.limits.output_kb * 1024
        while True:
            chunk = self.process.stdout.read1(65536)
            if not chunk:
                return
            if len(self._output) < cap:
                self._output += chunk[: cap - len(self._output)]

    @property
    def output(self) -> str:
        """What the submission printed (the first ``output_kb``)."""
        return self._output.decode("utf-8", "replace")

    def send(self, message: dict) -> None:
        """Send ``message`` (``WireError`` before writing anything if it is not plain data; ``EOFError`` if the
        worker died)."""
        try:
            wire.send(self._requests, message)
        except (BrokenPipeError, OSError):
            raise EOFError("the worker is gone") from None

    def receive(self, resolve) -> Any:
        """The worker's next reply, decoded (``EOFError`` if it died, ``WireError`` if it is not plain data)."""
        return wire.receive(self._replies, resolve)

    def enforced(self) -> dict[str, str]:
        """What limited this worker, for the report: isolation, and how processes and memory were capped."""
        processes = ("pids cgroup" if "pids" in self._cgroups.dirs
                     else "RLIMIT_NPROC" if os.geteuid() != 0 else "not limited (root without a pids cgroup)")
        memory = "RLIMIT_DATA" + (" and memory cgroup" if "memory" in self._cgroups.dirs else "")
        return {"isolation": isolation(), "processes": processes, "memory": memory}

    def exit_status(self) -> str:
        """How the worker ended, in words (after it died)."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            why = {"SIGKILL": " (killed: the memory limit, or a process it started)",
                   "SIGXCPU": " (the CPU-time limit)"}.get(name, "")
            return f"it was ended by {name}{why}"
        return f"it exited with status {code}"

    def kill(self) -> None:
        """Kill the worker and everything it started (safe from another thread; a pending request ends)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.kill()
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self._cgroups.kill_all()

    def close(self) -> None:
        """:meth:`kill`, then close the pipes and remove the worker's folder."""
        self.kill()
        for stream in (self._requests, self._replies):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self._folder, ignore_errors=True)


def die_with_parent() -> None:
    """Have the kernel kill the calling process when its parent dies (Linux; run in a child before exec)."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count if count else 1024


def _worker_env(folder: str) -> dict[str, str]:
    """A fresh environment: nothing of the grader's (no seed, no tokens), one thread, its own temp folder."""
    package_root = str(Path(clcourse.__file__).resolve().parent.parent)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder, "TMPDIR": folder,
            "PYTHONPATH": package_root, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "LANG": "C.UTF-8"}
