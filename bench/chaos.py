"""Chaos: a search for counterexamples to the no-duplicate promise.

Each round makes random spec changes (orgs and roles added or removed, assistant fields
edited, webhook secrets rotated), injects random Vapi faults into the emulator, runs one to
three `reconciler apply` processes at once and SIGKILLs some of them at random moments. After
every round, no account may hold two assistants tagged for one (org, role), and every stored
credential must decrypt. At the end the faults are cleared, in-flight late commits allowed to
land, and clean `apply --prune` runs until the plan is empty; then each account must hold
exactly its desired assistants, every tagged one tracked, the (active) mapping rows must equal
the accounts, and every credential decrypt to its spec's.

    python -m bench.chaos --rounds 25 --seed 1 [--database-url postgresql://postgres@host/db]

`--database-url` names a server (default: $RECONCILER_TEST_DATABASE_URL, else an embedded
Postgres in a temporary directory); a fresh database is created on it and dropped at the end.
The actions depend only on the seed (a round's on the seed and the round), so a violation is
replayed with the `--rounds R --seed S` it prints; only the moment a kill lands varies. The
last line is `rounds=N faults=F kills=K violations=V seed=S`; the exit code is 1 on any
violation.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psycopg
import pyrage  # type: ignore[import-untyped]
import yaml
from psycopg import sql

from reconciler.controller.run import Controller, pool_size
from reconciler.engine.model import tag_of
from reconciler.secrets import sops
from reconciler.secrets.crypto import CredentialDecryptError, MasterKey
from reconciler.spec.loader import LoadResult, load_tree
from reconciler.state.db import open_pool
from reconciler.state.embedded import temporary_embedded
from reconciler.state.migrate import migrate
from reconciler.state.store import StateWriter
from reconciler.vapi.client import http_client
from reconciler.vapi.emulator import fingerprint, running_emulator

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("inbound", "outbound")
START_ORGS, MAX_ORGS = 3, 6
HOOK_URL = "https://hooks.example.com/webhooks/vapi"
VAPI_TIMEOUT_S = 1.0  # the apply processes' client timeout: delays below go past it
DELAY_MS = (1200, 2500)
SETTLE_S = DELAY_MS[1] / 1000 + 2.0  # after it, no delayed request is still to land
PROCESS_DEADLINE_S = 120.0  # an apply still running after this is a violation (hung)
FINAL_APPLIES = 3
PATHS = {
    "POST": "/assistant",
    "GET": "/assistant",
    "PATCH": "/assistant/{id}",
    "DELETE": "/assistant/{id}",
}
WRITES = ("POST", "PATCH", "DELETE")
FAULT_KINDS = ("error", "error_after_commit", "late_commit", "delay", "429")
Say = Callable[[str], None]


def say_flush(text: str) -> None:
    print(text, flush=True)


# -- the desired world -------------------------------------------------------------------------


@dataclass
class Org:
    """One org: its identity (fixed for the run: id, key) and its current spec."""

    index: int
    org_id: str
    api_key: str
    secret: str
    assistants: dict[str, dict[str, Any]]

    @property
    def slug(self) -> str:
        return f"org-{self.index}"

    def doc(self) -> dict[str, Any]:
        return {
            "apiVersion": "reconciler/v1",
            "kind": "Organization",
            "metadata": {"id": self.org_id, "slug": self.slug, "name": self.slug.title()},
            "spec": {
                "credentials": {"vapi": {"apiKey": self.api_key, "webhookSecret": self.secret}},
                "assistants": self.assistants,
            },
        }


@dataclass
class World:
    """Every org ever written (their accounts are checked even after removal) and which are in
    the specs now."""

    seed: int
    orgs: list[Org] = field(default_factory=list)
    present: set[int] = field(default_factory=set)

    def current(self) -> list[Org]:
        return [o for o in self.orgs if o.index in self.present]


def assistant(rng: random.Random, slug: str, role: str) -> dict[str, Any]:
    """Fields the changes touch: name, firstMessage, model.temperature; server.url makes the
    reconciler add the webhook secret header, so a rotation reaches the assistants too."""
    return {
        "name": f"{slug} {role} {rng.randrange(1000)}",
        "firstMessage": f"Hello {rng.randrange(10**6)}",
        "model": {"provider": "openai", "model": "gpt-4o-mini", "temperature": temperature(rng)},
        "server": {"url": HOOK_URL},
    }


def temperature(rng: random.Random) -> float:
    return rng.randrange(0, 21) / 10


def new_org(world: World, rng: random.Random) -> Org:
    index = len(world.orgs)
    org = Org(
        index=index,
        org_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        api_key=f"chaos-{world.seed}-{index}-{rng.getrandbits(32):08x}",
        secret=f"whsec-{rng.getrandbits(48):012x}",
        assistants={},
    )
    org.assistants = {role: assistant(rng, org.slug, role) for role in ROLES}
    world.orgs.append(org)
    world.present.add(index)
    return org


def add_org(world: World, rng: random.Random) -> str | None:
    if len(world.present) >= MAX_ORGS:
        return None
    gone = [o for o in world.orgs if o.index not in world.present]
    if gone and rng.random() < 0.5:  # back under its old id and key: its account is adopted
        org = rng.choice(gone)
        world.present.add(org.index)
        return f"+{org.slug} (back)"
    return f"+{new_org(world, rng).slug}"


def remove_org(world: World, rng: random.Random) -> str | None:
    if len(world.present) <= 1:
        return None
    org = rng.choice(world.current())
    world.present.discard(org.index)
    return f"-{org.slug}"


def add_role(world: World, rng: random.Random) -> str | None:
    open_roles = [(o, r) for o in world.current() for r in ROLES if r not in o.assistants]
    if not open_roles:
        return None
    org, role = rng.choice(open_roles)
    org.assistants[role] = assistant(rng, org.slug, role)
    return f"+{org.slug}.{role}"


def remove_role(world: World, rng: random.Random) -> str | None:
    full = [o for o in world.current() if len(o.assistants) > 1]
    if not full:
        return None
    org = rng.choice(full)
    role = rng.choice(sorted(org.assistants))
    del org.assistants[role]
    return f"-{org.slug}.{role}"


def edit_field(world: World, rng: random.Random) -> str | None:
    org = rng.choice(world.current())
    role = rng.choice(sorted(org.assistants))
    fields = org.assistants[role]
    what = rng.choice(("name", "firstMessage", "temperature"))
    if what == "name":
        fields["name"] = f"{org.slug} {role} {rng.randrange(1000)}"
    elif what == "firstMessage":
        fields["firstMessage"] = f"Hi {rng.randrange(10**6)}"
    else:
        fields["model"] = {**fields["model"], "temperature": temperature(rng)}
    return f"~{org.slug}.{role}.{what}"


def rotate_secret(world: World, rng: random.Random) -> str | None:
    org = rng.choice(world.current())
    org.secret = f"whsec-{rng.getrandbits(48):012x}"
    return f"~{org.slug}.webhookSecret"


# Weighted towards what makes Vapi writes (creates above all): where duplicates could come from.
CHANGES = (add_org, remove_org, add_role, remove_role, edit_field, rotate_secret)
WEIGHTS = (3, 2, 3, 3, 3, 1)


def change_specs(world: World, rng: random.Random) -> list[str]:
    """Up to three random changes (one that does not apply now is skipped)."""
    picked = rng.choices(CHANGES, WEIGHTS, k=rng.choice((0, 1, 1, 2, 2, 3)))
    done = [change(world, rng) for change in picked]
    return [d for d in done if d is not None]


# -- faults and processes ----------------------------------------------------------------------


def random_fault(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """(its kind, the emulator's fault JSON). Delays go past the client timeout: `delay` then
    drops the work, `late_commit` does it after the client gave up. A fault after the work
    only means something on a write."""
    kind = rng.choice(FAULT_KINDS)
    after_work = kind in ("error_after_commit", "late_commit")
    method = rng.choice(WRITES if after_work else sorted(PATHS))
    fault: dict[str, Any] = {"method": method, "path": PATHS[method], "mode": kind}
    fault["times"] = rng.randint(1, 2)
    if kind in ("late_commit", "delay"):
        fault["delay_ms"] = rng.randint(*DELAY_MS)
    elif kind == "429":
        fault.update(mode="error", status=429, retry_after=rng.choice(("0", "1", "2")))
    else:
        fault["status"] = rng.choice((500, 502, 503, 504))
    return kind, fault


@dataclass
class Launch:
    """One apply process of a round: its arguments, and when (seconds into the round) it is
    started and SIGKILLed (never: infinity)."""

    argv: list[str]
    start_s: float
    kill_at_s: float = math.inf


def plan_launches(
    rng: random.Random, spec_dir: Path, older_dir: Path | None, slugs: list[str]
) -> list[Launch]:
    """One to three processes; a later one may read the previous revision (a stale CI job),
    scope itself to one org, prune, or wait for the org locks."""
    launches = []
    for i in range(rng.choice((1, 2, 2, 3))):
        stale = older_dir is not None and i > 0 and rng.random() < 0.2
        argv = ["apply", str(older_dir if stale and older_dir else spec_dir)]
        if rng.random() < 0.5:
            argv.append("--prune")
        if rng.random() < 0.3:
            argv += ["--lock-timeout", "5s"]
        if not stale and rng.random() < 0.15:
            argv += ["--org", rng.choice(slugs)]
        start = 0.0 if i == 0 else rng.uniform(0.0, 0.5)
        kill = start + rng.uniform(0.25, 1.5) if rng.random() < 0.4 else math.inf
        launches.append(Launch(argv, start, kill))
    return launches


@dataclass
class Ran:
    """What became of one launch: exit code (negative: signal), killed, hung, its log."""

    code: int | None
    killed: bool
    hung: bool
    log: Path


class Processes:
    """The apply processes of the run, each its own process group: all that still run are
    SIGKILLed on exit, also on Ctrl-C."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler", *argv],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> bool:
        """SIGKILL its group (sops children too); False when it had already exited."""
        if proc.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True

    def close(self) -> None:
        for proc in self.running:
            self.kill(proc)
        self.running.clear()

    def run(self, launches: list[Launch], env: dict[str, str], logs: Path) -> list[Ran]:
        """Starts each launch at its moment, kills at its moment, waits for all (bounded)."""
        t0 = time.monotonic()
        procs: list[subprocess.Popen[bytes] | None] = [None] * len(launches)
        killed, hung = [False] * len(launches), [False] * len(launches)
        while True:
            now = time.monotonic() - t0
            for i, launch in enumerate(launches):
                proc = procs[i]
                if proc is None and now >= launch.start_s:
                    procs[i] = self.start(launch.argv, env, logs / f"p{i}.log")
                elif proc is not None and now >= launch.kill_at_s:
                    launch.kill_at_s = math.inf  # tried once: it may have exited before
                    killed[i] = self.kill(proc)
            started = [p for p in procs if p is not None]
            if len(started) == len(procs) and all(p.poll() is not None for p in started):
                break
            if now > PROCESS_DEADLINE_S:
                for i, p in enumerate(procs):
                    hung[i] = p is not None and self.kill(p)
                break
            time.sleep(0.02)
        self.running = [p for p in self.running if p.poll() is None]
        return [
            Ran(p.returncode if p else None, killed[i], hung[i], logs / f"p{i}.log")
            for i, p in enumerate(procs)
        ]


# -- reading the truth -------------------------------------------------------------------------


def list_account(http: httpx.Client, api_key: str) -> list[dict[str, Any]]:
    resp = http.get(
        "/assistant", params={"limit": 1000}, headers={"Authorization": f"Bearer {api_key}"}
    )
    resp.raise_for_status()
    found: list[dict[str, Any]] = resp.json()
    return found


def tagged_ids(live: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(orgId, role) -> the ids of the assistants carrying that ownership tag."""
    out: dict[tuple[str, str], list[str]] = {}
    for a in live:
        tag = tag_of(a)
        if tag is not None:
            out.setdefault(tag, []).append(str(a["id"]))
    return out


def duplicate_problems(org: Org, live: list[dict[str, Any]]) -> list[str]:
    """Invariant 1 at any moment: one assistant at most per (org, role), none of another org."""
    problems = []
    for (org_id, role), ids in sorted(tagged_ids(live).items()):
        if org_id != org.org_id:
            problems.append(f"{org.slug}: account holds {role} assistant(s) {ids} of org {org_id}")
        elif len(ids) > 1:
            problems.append(f"{org.slug}: duplicate {role} assistants {ids}")
    return problems


def has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND table_name = %s AND column_name = %s)",
        (table, column),
    ).fetchone()
    return bool(row and row[0])


def active_mappings(conn: psycopg.Connection[Any]) -> dict[str, dict[str, list[str]]]:
    """org id -> role -> mapped assistant ids. Rows of deleted assistants may be kept with
    `inactive_at` set (for late webhooks); only active ones must equal the accounts."""
    query = "SELECT org_id::text, assistant_role, vapi_assistant_id FROM assistant_org_mapping"
    if has_column(conn, "assistant_org_mapping", "inactive_at"):
        query += " WHERE inactive_at IS NULL"
    out: dict[str, dict[str, list[str]]] = {}
    for org_id, role, assistant_id in conn.execute(query).fetchall():
        out.setdefault(org_id, {}).setdefault(role, []).append(assistant_id)
    return out


def stored_credentials(
    conn: psycopg.Connection[Any], key: MasterKey
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Invariant 4: every active credential (and each replaced Vapi config kept for webhooks)
    opens under the master key, bound to its row. Returns org id -> its Vapi config, and the
    rows that do not open."""
    vapi: dict[str, dict[str, Any]] = {}
    problems = []
    rows = conn.execute(
        "SELECT org_id::text, provider, encrypted_config, previous_encrypted_config"
        " FROM org_credentials WHERE is_active"
    ).fetchall()
    for org_id, provider, current, previous in rows:
        aad = f"{org_id}:{provider}"
        for n, token in enumerate([current, *(previous or "").split()]):
            try:
                config = key.decrypt(token, aad=aad)
            except CredentialDecryptError as exc:
                problems.append(f"credential {aad} ({'current' if n == 0 else 'previous'}): {exc}")
                continue
            if n == 0 and provider == "vapi":
                vapi[org_id] = config
    return vapi, problems


# -- the final state ---------------------------------------------------------------------------


def field_problems(org: Org, role: str, live: dict[str, Any]) -> list[str]:
    """The assistant carries what the spec says, with the current webhook secret."""
    want = org.assistants[role]
    where = f"{org.slug}.{role} {live.get('id')}"
    problems = [
        f"{where}: {name} is {live.get(name)!r}, spec says {want[name]!r}"
        for name in ("name", "firstMessage")
        if live.get(name) != want[name]
    ]
    model = live.get("model") or {}
    if model.get("temperature") != want["model"]["temperature"]:
        problems.append(
            f"{where}: temperature {model.get('temperature')!r},"
            f" spec says {want['model']['temperature']!r}"
        )
    server = live.get("server") or {}
    if (server.get("headers") or {}).get("x-vapi-secret") != org.secret:
        problems.append(f"{where}: server.headers lacks the current webhook secret")
    return problems


def final_org_problems(
    org: Org,
    live: list[dict[str, Any]],
    mapped: dict[str, list[str]],
    vapi_config: dict[str, Any] | None,
) -> list[str]:
    """Invariants 1-4 for one org in the specs, after the clean apply: exactly its desired
    assistants, each tracked, the active mapping equal to the account, its credential current."""
    problems = duplicate_problems(org, live)
    mine = {role: ids for (oid, role), ids in tagged_ids(live).items() if oid == org.org_id}
    if set(mine) != set(org.assistants):
        problems.append(f"{org.slug}: live roles {sorted(mine)}, desired {sorted(org.assistants)}")
    untagged = [a.get("id") for a in live if tag_of(a) is None]
    if untagged:
        problems.append(f"{org.slug}: untagged assistants {untagged}")
    for role, ids in sorted(mine.items()):
        untracked = sorted(set(ids) - set(mapped.get(role, [])))
        if untracked:
            problems.append(f"{org.slug}: tagged {role} assistant(s) {untracked} not mapped")
        if len(ids) == 1 and role in org.assistants:
            by_id = {str(a["id"]): a for a in live}
            problems += field_problems(org, role, by_id[ids[0]])
    truth = {role: sorted(ids) for role, ids in mine.items()}
    if {role: sorted(ids) for role, ids in mapped.items()} != truth:
        problems.append(f"{org.slug}: active mapping {mapped} != account {truth}")
    want = {"apiKey": org.api_key, "webhookSecret": org.secret}
    if vapi_config != want:
        problems.append(f"{org.slug}: stored Vapi credential is not the spec's")
    return problems


def converge(
    db_url: str, key: MasterKey, vapi_url: str, spec_dir: Path, sops_env: dict[str, str]
) -> tuple[int, list[str]]:
    """The clean `apply --prune`, in-process so that it can skip the 60 s a create with an
    unknown outcome is waited for (every such create has landed or never will: see SETTLE_S):
    repeated until the plan is empty. Returns the applies it took and what stopped it."""

    def decrypt(path: Path, data: bytes) -> bytes:
        return sops.decrypt_bytes(path, data, sops_env)

    loaded: LoadResult = load_tree(spec_dir, decrypt=decrypt)
    if loaded.problems:
        return 0, [f"specs: {p}" for p in loaded.problems]
    pool = open_pool(db_url, max_size=pool_size(4), name="chaos-final")
    try:
        with http_client(vapi_url, timeout_s=10) as http:
            ctl = Controller(StateWriter(pool), http, key, concurrency=4, create_grace_s=0)
            errors: list[str] = []
            for n in range(1, FINAL_APPLIES + 1):
                report = ctl.apply(loaded, prune=True)
                errors = [f"{o.slug}: {o.error}" for o in report.failed]
                if report.ok and not ctl.plan(loaded, prune=True).has_changes:
                    return n, []
            return FINAL_APPLIES, [f"not converged after {FINAL_APPLIES} clean applies {errors}"]
    finally:
        pool.close()


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Violation:
    round: int
    final: bool
    what: str

    def describe(self, seed: int) -> str:
        at = "final" if self.final else str(self.round)
        return (
            f"VIOLATION round={at} seed={seed}: {self.what}"
            f" (replay: python -m bench.chaos --rounds {self.round} --seed {seed})"
        )


@dataclass
class Result:
    seed: int
    rounds: int = 0
    faults: int = 0
    kills: int = 0
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fault_kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def last_line(self) -> str:
        return (
            f"rounds={self.rounds} faults={self.faults} kills={self.kills}"
            f" violations={len(self.violations)} seed={self.seed}"
        )


class Chaos:
    """One run's live parts (emulator, database, processes, specs) and its bookkeeping."""

    def __init__(
        self,
        seed: int,
        tmp: Path,
        db_url: str,
        vapi_url: str,
        procs: Processes,
        say: Say,
        keep: bool = False,
    ) -> None:
        self.world = World(seed)
        self.result = Result(seed)
        self.tmp, self.db_url, self.vapi_url = tmp, db_url, vapi_url
        self.procs, self.say, self.keep = procs, say, keep
        self.key = MasterKey.generate()
        self.http = httpx.Client(base_url=vapi_url, timeout=30)
        self.conn = psycopg.connect(db_url, autocommit=True)
        identity = pyrage.x25519.Identity.generate()
        (tmp / "age.key").write_text(f"{identity}\n")
        self.public_key = str(identity.to_public())
        self.env = self.apply_env()
        self.written: dict[int, tuple[str, bytes]] = {}  # org index -> (yaml, encrypted bytes)
        self.spec_dirs: list[Path] = []
        rng = random.Random(f"chaos:{seed}:0")
        for _ in range(START_ORGS):
            new_org(self.world, rng)

    def close(self) -> None:
        self.http.close()
        self.conn.close()

    def apply_env(self) -> dict[str, str]:
        """The environment of `reconciler apply`: this run's database, key, age key, emulator;
        nothing inherited that would change what it does."""
        dropped = ("RECONCILER_", "VAPI_", "SOPS_AGE_KEY")
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        env.update(
            RECONCILER_DATABASE_URL=self.db_url,
            RECONCILER_MASTER_KEY=self.key.to_b64(),
            SOPS_AGE_KEY_FILE=str(self.tmp / "age.key"),
            VAPI_BASE_URL=self.vapi_url,
            RECONCILER_DATA_DIR=str(self.tmp / "data"),
            RECONCILER_VAPI_TIMEOUT=str(VAPI_TIMEOUT_S),
            RECONCILER_CONCURRENCY="4",
            PYTHONUNBUFFERED="1",
        )
        return env

    # -- specs --------------------------------------------------------------------------------

    def write_specs(self, round_no: int) -> Path:
        """This revision in a new directory (the previous one may still be read by a stale
        process); an unchanged file is copied, a changed one encrypted again with sops."""
        root = self.tmp / "specs" / f"r{round_no:04d}"
        root.mkdir(parents=True)
        (root / ".sops.yaml").write_text(
            "creation_rules:\n  - path_regex: \\.yaml$\n    encrypted_regex: ^credentials$\n"
            f"    mac_only_encrypted: true\n    age: {self.public_key}\n"
        )
        for org in self.world.current():
            path = root / f"{org.slug}.yaml"
            text = yaml.safe_dump(org.doc(), sort_keys=False)
            known = self.written.get(org.index)
            if known is not None and known[0] == text:
                path.write_bytes(known[1])
                continue
            path.write_text(text)
            subprocess.run(
                [sops.sops_binary(), "encrypt", "-i", str(path)],
                check=True,
                capture_output=True,
                cwd=root,
            )
            self.written[org.index] = (text, path.read_bytes())
        self.spec_dirs.append(root)
        for old in self.spec_dirs[:-2]:  # only the last two revisions are ever read
            shutil.rmtree(old, ignore_errors=True)
        self.spec_dirs = self.spec_dirs[-2:]
        return root

    # -- a round ------------------------------------------------------------------------------

    def inject(self, rng: random.Random) -> list[str]:
        kinds = []
        for _ in range(rng.choice((0, 1, 2, 2, 3, 4))):
            kind, fault = random_fault(rng)
            self.http.post("/_emulator/faults", json=fault).raise_for_status()
            delay = f" {fault['delay_ms']}ms" if "delay_ms" in fault else ""
            kinds.append(f"{fault['method']} {kind}{delay} x{fault['times']}")
            self.result.faults += 1
            self.result.fault_kinds[kind] += 1
        return kinds

    def round(self, n: int, total: int) -> None:
        """Changes, faults, processes, then the checks that hold at any moment."""
        started = time.monotonic()
        rng = random.Random(f"chaos:{self.world.seed}:{n}")
        changes = change_specs(self.world, rng)
        spec_dir = self.write_specs(n)
        older = self.spec_dirs[-2] if len(self.spec_dirs) > 1 else None
        faults = self.inject(rng)
        slugs = [o.slug for o in self.world.current()]
        launches = plan_launches(rng, spec_dir, older, slugs)
        logs = self.tmp / "logs" / f"r{n:04d}"
        logs.mkdir(parents=True)
        ran = self.procs.run(launches, self.env, logs)
        self.http.delete("/_emulator/faults").raise_for_status()
        self.result.kills += sum(r.killed for r in ran)
        problems = self.note_processes(n, ran) + self.check_round()
        for what in problems:
            self.violate(n, what)
        self.result.rounds = n
        self.say(
            f"round {n}/{total} {time.monotonic() - started:4.1f}s"
            f" | specs {' '.join(changes) or '-'} | faults {', '.join(faults) or '-'}"
            f" | apply {' '.join(self.outcome(r) for r in ran)}"
            f" | {'ok' if not problems else f'{len(problems)} VIOLATION(S)'}"
        )
        if not self.keep:
            shutil.rmtree(logs, ignore_errors=True)

    @staticmethod
    def outcome(ran: Ran) -> str:
        return "killed" if ran.killed else "HUNG" if ran.hung else f"exit={ran.code}"

    def note_processes(self, n: int, ran: list[Ran]) -> list[str]:
        """A hung apply is a violation; an unexpected exit or a traceback from one not killed is
        noted (not a broken invariant, but worth a look)."""
        problems = []
        for i, r in enumerate(ran):
            if r.hung:
                problems.append(f"apply p{i} still running after {PROCESS_DEADLINE_S:.0f} s")
            elif not r.killed:
                text = r.log.read_text(errors="replace")
                if r.code not in (0, 1) or "Traceback" in text or "internal error" in text:
                    tail = " / ".join(text.strip().splitlines()[-3:])
                    self.result.notes.append(f"round {n} p{i} exit={r.code}: {tail}")
        return problems

    def check_round(self) -> list[str]:
        """Invariant 1 (no duplicates) in every account ever used; invariant 4."""
        problems = []
        for org in self.world.orgs:
            problems += duplicate_problems(org, list_account(self.http, org.api_key))
        problems += stored_credentials(self.conn, self.key)[1]
        return problems

    def violate(self, n: int, what: str, *, final: bool = False) -> None:
        v = Violation(n, final, what)
        self.result.violations.append(v)
        self.say(v.describe(self.world.seed))

    # -- the end ------------------------------------------------------------------------------

    def final(self) -> None:
        """Faults cleared, late commits landed, a clean apply until converged, then the
        invariants on the whole state."""
        started = time.monotonic()
        self.http.delete("/_emulator/faults").raise_for_status()
        time.sleep(SETTLE_S)
        spec_dir = self.spec_dirs[-1]
        applies, problems = converge(self.db_url, self.key, self.vapi_url, spec_dir, self.env)
        problems += self.check_final()
        for what in problems:
            self.violate(self.result.rounds, what, final=True)
        live = sum(len(o.assistants) for o in self.world.current())
        self.say(
            f"final {time.monotonic() - started:4.1f}s | clean apply --prune x{applies}"
            f" | {len(self.world.present)} orgs, {live} desired assistants"
            f" | {'ok' if not problems else f'{len(problems)} VIOLATION(S)'}"
        )

    def check_final(self) -> list[str]:
        mapped = active_mappings(self.conn)
        vapi, problems = stored_credentials(self.conn, self.key)
        accounts = self.http.get("/_emulator/accounts").json()
        for org in self.world.orgs:
            live = list_account(self.http, org.api_key)
            counted = accounts.get(fingerprint(org.api_key), {}).get("assistants", 0)
            if counted != len(live):
                problems.append(f"{org.slug}: listing shows {len(live)}, account has {counted}")
            if org.index in self.world.present:
                problems += final_org_problems(
                    org, live, mapped.get(org.org_id, {}), vapi.get(org.org_id)
                )
            else:  # a removed org's account is left as it was: only no duplicates
                problems += duplicate_problems(org, live)
        return problems


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database on the server for this run, dropped at the end (also on Ctrl-C)."""
    name = f"chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def run(
    rounds: int,
    seed: int,
    server_url: str | None = None,
    *,
    say: Say = say_flush,
    keep: bool = False,
) -> Result:
    """The whole run; everything it started is stopped and removed when it returns or raises."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="reconciler-chaos-"))
        if not keep:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        if server_url is None:
            server_url = stack.enter_context(temporary_embedded(tmp / "pg"))
        db_url = stack.enter_context(fresh_database(server_url))
        pool = open_pool(db_url, max_size=2, name="chaos-migrate")
        migrate(pool)
        pool.close()
        vapi_url = stack.enter_context(running_emulator())
        procs = Processes()
        stack.callback(procs.close)
        chaos = Chaos(seed, tmp, db_url, vapi_url, procs, say, keep)
        stack.callback(chaos.close)
        say(f"chaos: seed={seed} rounds={rounds} work dir {tmp}")
        for n in range(1, rounds + 1):
            chaos.round(n, rounds)
        chaos.final()
        result = chaos.result
    result.seconds = time.monotonic() - started
    return result


def report(result: Result, say: Say = say_flush) -> None:
    for note in result.notes:
        say(f"note: {note}")
    for v in result.violations:
        say(v.describe(result.seed))
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(result.fault_kinds.items())) or "-"
    say(f"faults by kind: {kinds}; wall time {result.seconds:.1f}s")
    say(result.last_line)


def interrupt(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1, help="the same seed, the same actions")
    ap.add_argument(
        "--database-url",
        default=os.environ.get("RECONCILER_TEST_DATABASE_URL"),
        help="a Postgres server to create the run's database on (default:"
        " $RECONCILER_TEST_DATABASE_URL, else an embedded one)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, specs)")
    args = ap.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        result = run(args.rounds, args.seed, args.database_url, keep=args.keep)
    except KeyboardInterrupt:
        print("interrupted: processes stopped, database dropped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    report(result)
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
