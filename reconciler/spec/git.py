"""The git source of `serve --git-url URL --git-ref REF`: the revision to reconcile, fetched
with the git binary into the data directory (a remote URL or a local repository path).

One clone per URL under `<data_dir>/git/`; each fetch takes REF (a branch, tag or commit)
shallowly and checks it out detached, with untracked files removed, so the tree read is
exactly that commit's. A failure is one line (the URL shown without any password), and the
caller keeps the last revision fetched.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ReconcilerError
from reconciler.redact import printable, redact_text

GIT_TIMEOUT_S = 120.0


class GitError(ReconcilerError):
    """The git source could not be fetched or checked out."""


def shown_url(url: str) -> str:
    """The URL with its userinfo masked: tokens travel there, as the password
    (`user:TOKEN@`) or alone (`TOKEN@`, as GitHub accepts)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    if parts.password is not None:
        netloc = f"{parts.username}:***@{parts.hostname or ''}"
    else:
        netloc = f"***@{parts.hostname or ''}"
    if port:
        netloc += f":{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Revision:
    root: Path  # the checkout: PATH is read relative to it
    commit: str


def run_git(*args: str, cwd: Path | None, url: str = "", ref: str = "") -> str:
    """`git ARGS` without a terminal prompt, bounded in time; a failure is one `GitError` line
    naming the command (and the URL, its userinfo masked)."""
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",  # never wait for a password on a terminal
        "GIT_ASKPASS": "true",
        "LC_ALL": "C",
    }
    about = f" of {shown_url(url)}" if url else ""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise GitError("the git binary is not installed") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]}{about} took over {GIT_TIMEOUT_S:g}s") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        if url:
            reason = reason.replace(url, shown_url(url))
        where = f" ({ref})" if ref else ""
        raise GitError(f"git {args[0]}{about}{where} failed: {printable(redact_text(reason), 300)}")
    return done.stdout.strip()


class GitSource:
    def __init__(self, url: str, ref: str, data_dir: Path) -> None:
        if not url or url.startswith("-") or not ref or ref.startswith("-"):
            raise GitError("--git-url and --git-ref must be given and not start with '-'")
        self.url = url
        self.ref = ref
        name = hashlib.sha256(url.encode()).hexdigest()[:16]
        self.checkout = data_dir / "git" / name
        self.last: Revision | None = None

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        return run_git(*args, cwd=cwd, url=self.url, ref=self.ref)

    def fetch(self) -> Revision:
        """Fetch REF and check it out; returns the checkout and its commit SHA."""
        repo = self.checkout
        if not (repo / ".git").is_dir():
            repo.mkdir(parents=True, exist_ok=True)
            self._git("init", "--quiet", str(repo))
        fetch = ["fetch", "--quiet", "--depth", "1", "--force", "--no-tags", "--"]
        self._git(*fetch, self.url, self.ref, cwd=repo)
        commit = self._git("rev-parse", "--verify", "FETCH_HEAD^{commit}", cwd=repo)
        # a git killed mid-checkout (timeout, SIGKILL) leaves its lock; only we use this clone
        (repo / ".git" / "index.lock").unlink(missing_ok=True)
        self._git("checkout", "--quiet", "--force", "--detach", commit, cwd=repo)
        self._git("clean", "--quiet", "-ffdx", cwd=repo)
        self.last = Revision(repo, commit)
        return self.last


DIRTY = "-dirty"


def worktree_revision(path: Path) -> str | None:
    """What `apply PATH` records as its run's revision, as `serve --git-url` records the commit
    it fetched: the commit of the git work tree holding `path` (`git rev-parse HEAD`), with
    `-dirty` appended when the spec file or folder differs from it (a change staged or not, or
    a file git does not track yet; ignored files do not count). None outside a work tree, in
    one without a commit yet, or when git is not installed or refuses the folder."""
    where = path if path.is_dir() else path.parent
    if not where.is_dir():
        return None
    try:
        if run_git("rev-parse", "--is-inside-work-tree", cwd=where) != "true":
            return None
        commit = run_git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=where)
        changed = run_git(
            "status", "--porcelain", "--untracked-files=all", "--", str(path.resolve()), cwd=where
        )
    except GitError:
        return None
    return commit + DIRTY if changed else commit


def tree_at(path: Path, ref: str, dest: Path) -> Path:
    """The spec file or folder `path` (inside a git work tree) as it is at revision `ref`,
    extracted under `dest`; an empty folder when it did not exist then. Offline: only the
    local repository is read."""
    if not ref or ref.startswith("-"):
        raise GitError("--base must name a revision and not start with '-'")
    where = path if path.is_dir() else path.parent
    top = Path(run_git("rev-parse", "--show-toplevel", cwd=where))
    try:
        rel = path.resolve().relative_to(top.resolve())
    except ValueError:
        raise GitError(f"{path} is not inside the git work tree {top}") from None
    run_git("rev-parse", "--verify", f"{ref}^{{commit}}", cwd=top)
    target = dest / "base"
    target.mkdir(parents=True, exist_ok=True)
    listed = run_git("ls-tree", "-r", "--name-only", ref, "--", str(rel) or ".", cwd=top)
    if not listed:
        return target / rel
    archive = dest / "base.tar"
    run_git("archive", "--format=tar", f"--output={archive}", ref, "--", str(rel), cwd=top)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")  # no links out, no absolute paths
    return target / rel
