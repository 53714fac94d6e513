"""Chaos: a search for counterexamples to the no-duplicate promise.

Every org has all three kinds: tools (a function tool `lookup` with a server URL, an
`endCall`), assistants referring to them (`tools:`), and Twilio numbers bound to assistants
(`credentials.twilio`); half the new orgs' accounts already hold one of their tools or numbers,
made by hand (only its natural key makes it the org's). Each round makes random spec changes
(orgs and roles added or removed, assistant fields edited, webhook secrets rotated, tools
edited, removed and added back, assistants' tool lists changed, numbers rebound, unbound,
removed and added back), injects random Vapi faults into the emulator (error,
error_after_commit, late_commit, delay, 429 on POST/PATCH/DELETE/GET of /assistant, /tool and
/phone-number; one not used up stays armed for the next round), runs one to three `reconciler
apply` processes at once and SIGKILLs some of them at a random moment or after a random number
of Vapi requests (mid-apply). After every round, no account may hold a duplicate of any kind
(two assistants tagged for one (org, role), two tools of one type + function.name, two records
of one number), and every stored credential must decrypt. At the end the faults are cleared,
in-flight late commits allowed to land, and clean `apply --prune` runs until the plan is empty;
then each account must hold exactly its desired objects of every kind, none of them unrecorded
in Postgres (no orphan), the active mapping rows of every kind must equal the accounts (one per
(org, kind, name)), each assistant's `model.toolIds` must be its tools' ids and each number's
`assistantId` its assistant's id, and every credential decrypt to its spec's.

    python -m bench.chaos --rounds 25 --seed 1 [--database-url postgresql://postgres@host/db]

`--database-url` names a server (default: $RECONCILER_TEST_DATABASE_URL, else an embedded
Postgres in a temporary directory); a fresh database is created on it and dropped at the end.
The actions depend only on the seed (a round's on the seed and the round), so a violation is
replayed with the `--rounds R --seed S` it prints; only the moment a kill lands (and so which
request a fault answers) varies. The
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
TEMPLATE = "chaos-desk"
START_ORGS, MAX_ORGS = 3, 6
HOOK_URL = "https://hooks.example.com/webhooks/vapi"
VAPI_TIMEOUT_S = 1.0  # the apply processes' client timeout: delays below go past it
DELAY_MS = (1200, 2500)
SETTLE_S = DELAY_MS[1] / 1000 + 2.0  # after it, no delayed request is still to land
PROCESS_DEADLINE_S = 120.0  # an apply still running after this is a violation (hung)
FINAL_APPLIES = 3
KILL_AFTER_REQUESTS = 24  # a kill by count lands after 1 to this many Vapi requests
HANDMADE_SHARE = 0.5  # of the new orgs, whose account already holds one of their objects
FAULT_ROUNDS = 4  # a fault not used up in its round is armed again for the next one
COLLECTIONS = ("/assistant", "/tool", "/phone-number")  # the kinds, by their Vapi path
PATHS = {"POST": "{}", "GET": "{}", "PATCH": "{}/{{id}}", "DELETE": "{}/{{id}}"}
WRITES = ("POST", "PATCH", "DELETE")
TWILIO = {"accountSid": "AC" + "c" * 32, "authToken": "chaos-twilio-token"}
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
    assistants: dict[str, dict[str, Any]]  # role -> fields, `tools: [name]` among them
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # spec.tools
    numbers: dict[str, str | None] = field(default_factory=dict)  # number -> role (None: unbound)
    # role -> the version of the `chaos-desk` template it is made from (its fields then go
    # through the template: `with` and `overrides`, and the greeting gains " v<version>")
    templated: dict[str, int] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return f"org-{self.index}"

    def all_numbers(self) -> tuple[str, ...]:
        """The org's numbers, in the spec or not: its own, never another org's."""
        return tuple(f"+1415555{self.index:02d}{j:02d}" for j in range(len(ROLES)))

    def expected(self, role: str) -> dict[str, Any]:
        """The assistant's fields as Vapi must end up holding them."""
        fields = self.assistants[role]
        version = self.templated.get(role)
        if version is None:
            return fields
        return {**fields, "firstMessage": f"{fields['firstMessage']} v{version}"}

    def spec_assistant(self, role: str) -> dict[str, Any]:
        fields = self.assistants[role]
        version = self.templated.get(role)
        if version is None:
            return fields
        return {
            "template": f"{TEMPLATE}@{version}",
            "with": {"name": fields["name"], "greeting": fields["firstMessage"]},
            "overrides": {
                "model": {"temperature": fields["model"]["temperature"]},
                "tools": fields["tools"],
            },
        }

    def doc(self) -> dict[str, Any]:
        credentials: dict[str, Any] = {
            "vapi": {"apiKey": self.api_key, "webhookSecret": self.secret}
        }
        assistants = {role: self.spec_assistant(role) for role in self.assistants}
        spec: dict[str, Any] = {"credentials": credentials, "assistants": assistants}
        if self.tools:
            spec["tools"] = self.tools
        if self.numbers:
            credentials["twilio"] = dict(TWILIO)
            spec["phoneNumbers"] = [
                {"provider": "twilio", "number": n, **({"assistant": r} if r else {})}
                for n, r in sorted(self.numbers.items())
            ]
        return {
            "apiVersion": "reconciler/v1",
            "kind": "Organization",
            "metadata": {"id": self.org_id, "slug": self.slug, "name": self.slug.title()},
            "spec": spec,
        }


@dataclass
class World:
    """Every org ever written (their accounts are checked even after removal) and which are in
    the specs now."""

    seed: int
    orgs: list[Org] = field(default_factory=list)
    present: set[int] = field(default_factory=set)
    template_version: int = 1  # the newest version of `chaos-desk`; every one stays written

    def current(self) -> list[Org]:
        return [o for o in self.orgs if o.index in self.present]


def assistant(rng: random.Random, slug: str, role: str, tools: list[str]) -> dict[str, Any]:
    """Fields the changes touch: name, firstMessage, model.temperature, tools; server.url makes
    the reconciler add the webhook secret header, so a rotation reaches the assistants too."""
    return {
        "name": f"{slug} {role} {rng.randrange(1000)}",
        "firstMessage": f"Hello {rng.randrange(10**6)}",
        "model": {"provider": "openai", "model": "gpt-4o-mini", "temperature": temperature(rng)},
        "server": {"url": HOOK_URL},
        "tools": tools,
    }


def lookup_tool(rng: random.Random) -> dict[str, Any]:
    """The function tool: its description is what edits change; its server URL gets the
    webhook secret header as the assistants' does."""
    return {
        "type": "function",
        "function": {
            "description": f"Look up an order {rng.randrange(10**6)}",
            "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
        },
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
    org.tools = {"lookup": lookup_tool(rng), "end_call": {"type": "endCall"}}
    tools = {"inbound": ["lookup", "end_call"], "outbound": ["end_call"]}
    org.assistants = {role: assistant(rng, org.slug, role, tools[role]) for role in ROLES}
    org.numbers = dict(zip(org.all_numbers(), ROLES, strict=True))
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
    org.assistants[role] = assistant(rng, org.slug, role, rng.sample(sorted(org.tools), 1))
    return f"+{org.slug}.{role}"


def remove_role(world: World, rng: random.Random) -> str | None:
    full = [o for o in world.current() if len(o.assistants) > 1]
    if not full:
        return None
    org = rng.choice(full)
    role = rng.choice(sorted(org.assistants))
    del org.assistants[role]
    org.templated.pop(role, None)
    (other,) = org.assistants
    for number, bound in org.numbers.items():  # its numbers are answered by the other one
        if bound == role:
            org.numbers[number] = other
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


def template_doc(version: int) -> dict[str, Any]:
    """`chaos-desk@version`: what a templated assistant is made from; each version changes
    the greeting, so moving to it is an update of every org that uses it."""
    return {
        "apiVersion": "reconciler/v1",
        "kind": "AssistantTemplate",
        "metadata": {"name": TEMPLATE, "version": version},
        "parameters": {"name": {"type": "string", "maxLength": 40}, "greeting": {"type": "string"}},
        "assistant": {
            "name": "${name}",
            "firstMessage": f"${{greeting}} v{version}",
            "model": {"provider": "openai", "model": "gpt-4o-mini"},
            "server": {"url": HOOK_URL},
        },
    }


def template_role(world: World, rng: random.Random) -> str | None:
    """One assistant moves onto the newest template version, or back to its own fields."""
    org = rng.choice(world.current())
    role = rng.choice(sorted(org.assistants))
    if role in org.templated:
        del org.templated[role]
        return f"-{org.slug}.{role}.template"
    org.templated[role] = world.template_version
    return f"+{org.slug}.{role}.template@{world.template_version}"


def roll_template(world: World, rng: random.Random) -> str | None:
    """A new template version, and every assistant made from the template moves to it (a
    rollout in one commit: within --max-template-orgs)."""
    world.template_version += 1
    for org in world.orgs:
        for role in org.templated:
            org.templated[role] = world.template_version
    return f"~{TEMPLATE}@{world.template_version}"


def rotate_secret(world: World, rng: random.Random) -> str | None:
    org = rng.choice(world.current())
    org.secret = f"whsec-{rng.getrandbits(48):012x}"
    return f"~{org.slug}.webhookSecret"


def edit_tool(world: World, rng: random.Random) -> str | None:
    with_lookup = [o for o in world.current() if "lookup" in o.tools]
    if not with_lookup:
        return None
    org = rng.choice(with_lookup)
    org.tools["lookup"]["function"]["description"] = f"Look up {rng.randrange(10**6)}"
    return f"~{org.slug}.tools.lookup"


def toggle_tool(world: World, rng: random.Random) -> str | None:
    """The function tool leaves the spec (and every assistant's list), or comes back (its old
    object, if still in the account, is the org's by its natural key)."""
    org = rng.choice(world.current())
    if "lookup" in org.tools:
        del org.tools["lookup"]
        for fields in org.assistants.values():
            fields["tools"] = [t for t in fields["tools"] if t != "lookup"]
        return f"-{org.slug}.tools.lookup"
    org.tools["lookup"] = lookup_tool(rng)
    role = rng.choice(sorted(org.assistants))
    org.assistants[role]["tools"] = ["lookup", *org.assistants[role]["tools"]]
    return f"+{org.slug}.tools.lookup"


def retool(world: World, rng: random.Random) -> str | None:
    """One assistant's tool list: a tool added or taken off (its `model.toolIds` follows)."""
    org = rng.choice(world.current())
    role = rng.choice(sorted(org.assistants))
    fields = org.assistants[role]
    name = rng.choice(sorted(org.tools))
    if name in fields["tools"]:
        fields["tools"] = [t for t in fields["tools"] if t != name]
        return f"-{org.slug}.{role}.tools.{name}"
    fields["tools"] = [*fields["tools"], name]
    return f"+{org.slug}.{role}.tools.{name}"


def rebind_number(world: World, rng: random.Random) -> str | None:
    with_numbers = [o for o in world.current() if o.numbers]
    if not with_numbers:
        return None
    org = rng.choice(with_numbers)
    number = rng.choice(sorted(org.numbers))
    choices = [r for r in (*sorted(org.assistants), None) if r != org.numbers[number]]
    org.numbers[number] = rng.choice(choices)
    return f"~{org.slug}.{number}->{org.numbers[number] or 'unbound'}"


def toggle_number(world: World, rng: random.Random) -> str | None:
    """A number leaves the spec (released, kept until a prune) or comes back (adopted by its
    number if still in the account)."""
    org = rng.choice(world.current())
    number = rng.choice(org.all_numbers())
    if number in org.numbers:
        del org.numbers[number]
        return f"-{org.slug}.{number}"
    org.numbers[number] = rng.choice(sorted(org.assistants))
    return f"+{org.slug}.{number}"


# Weighted towards what makes Vapi writes (creates above all): where duplicates could come from.
CHANGES = (
    add_org,
    remove_org,
    add_role,
    remove_role,
    edit_field,
    rotate_secret,
    edit_tool,
    toggle_tool,
    retool,
    rebind_number,
    toggle_number,
    template_role,
    roll_template,
)
WEIGHTS = (3, 2, 3, 3, 3, 1, 1, 2, 1, 2, 2, 2, 1)


def change_specs(world: World, rng: random.Random) -> list[str]:
    """Up to three random changes (one that does not apply now is skipped)."""
    picked = rng.choices(CHANGES, WEIGHTS, k=rng.choice((0, 1, 1, 2, 2, 3)))
    done = [change(world, rng) for change in picked]
    return [d for d in done if d is not None]


# -- faults and processes ----------------------------------------------------------------------


def random_fault(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """(its kind, the emulator's fault JSON), on a route of any of the three kinds. Delays go
    past the client timeout: `delay` then drops the work, `late_commit` does it after the
    client gave up. A fault after the work only means something on a write."""
    kind = rng.choice(FAULT_KINDS)
    after_work = kind in ("error_after_commit", "late_commit")
    method = rng.choice(WRITES if after_work else sorted(PATHS))
    path = PATHS[method].format(rng.choice(COLLECTIONS))
    fault: dict[str, Any] = {"method": method, "path": path, "mode": kind}
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
    """One apply process of a round: its arguments, when (seconds into the round) it is
    started and SIGKILLed (never: infinity), or after how many Vapi requests (of any process)
    since its start it is SIGKILLed: mid-apply, between any two of its steps."""

    argv: list[str]
    start_s: float
    kill_at_s: float = math.inf
    kill_after_requests: int | None = None


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
        kill = start + rng.uniform(0.25, 1.5) if rng.random() < 0.15 else math.inf
        after = rng.randint(1, KILL_AFTER_REQUESTS) if rng.random() < 0.3 else None
        launches.append(Launch(argv, start, kill, after))
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

    def run(
        self,
        launches: list[Launch],
        env: dict[str, str],
        logs: Path,
        requests: Callable[[], int] = lambda: 0,
    ) -> list[Ran]:
        """Starts each launch at its moment, kills at its moment or once `requests()` (the Vapi
        requests so far) has grown by its count since it started, waits for all (bounded)."""
        t0 = time.monotonic()
        procs: list[subprocess.Popen[bytes] | None] = [None] * len(launches)
        seen_at_start = [0] * len(launches)
        killed, hung = [False] * len(launches), [False] * len(launches)
        while True:
            now = time.monotonic() - t0
            counting = any(
                p is not None and p.poll() is None and launch.kill_after_requests is not None
                for p, launch in zip(procs, launches, strict=True)
            )
            seen = requests() if counting else 0
            for i, launch in enumerate(launches):
                proc = procs[i]
                after = launch.kill_after_requests
                if proc is None and now >= launch.start_s:
                    if after is not None:
                        seen_at_start[i] = requests()
                    procs[i] = self.start(launch.argv, env, logs / f"p{i}.log")
                elif proc is not None and (
                    now >= launch.kill_at_s
                    or (counting and after is not None and seen - seen_at_start[i] >= after)
                ):
                    launch.kill_at_s, launch.kill_after_requests = math.inf, None  # tried once
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


def fault_label(fault: dict[str, Any]) -> str:
    """`<kind> <METHOD> <collection>` of an emulator fault (as sent or as listed)."""
    kind = "429" if fault["mode"] == "error" and fault.get("status") == 429 else fault["mode"]
    return f"{kind} {fault['method']} {str(fault['path']).removesuffix('/{id}')}"


def fault_identity(fault: dict[str, Any]) -> tuple[Any, ...]:
    """What tells a fault as sent from the same fault as the emulator lists it."""
    status = fault.get("status", None if fault["mode"] == "late_commit" else 500)
    return fault["method"], fault["path"], fault["mode"], status, fault.get("delay_ms", 0)


def list_account(
    http: httpx.Client, api_key: str, path: str = "/assistant"
) -> list[dict[str, Any]]:
    """Every object of one kind in the account (`path`: its collection)."""
    resp = http.get(path, params={"limit": 1000}, headers={"Authorization": f"Bearer {api_key}"})
    resp.raise_for_status()
    found: list[dict[str, Any]] = resp.json()
    return found


# The kinds beyond assistants: name in Postgres (vapi_resources.kind) -> collection path.
RESOURCE_PATHS = {"tool": "/tool", "phoneNumber": "/phone-number"}
Live = dict[str, list[dict[str, Any]]]  # kind ("tool", "phoneNumber") -> the account's objects


def list_resources(http: httpx.Client, api_key: str) -> Live:
    return {kind: list_account(http, api_key, path) for kind, path in RESOURCE_PATHS.items()}


def natural_key(kind: str, obj: dict[str, Any]) -> str | None:
    """What makes an object of the account the org's (its own reading, not the engine's): a
    tool by its type and, for a function tool, `function.name`; a number by its number."""
    if kind == "phoneNumber":
        number = obj.get("number") or obj.get("sipUri")
        return number if isinstance(number, str) else None
    function = obj.get("function") if obj.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    return f"{obj.get('type')}:{name}" if function is not None else str(obj.get("type"))


def desired_keys(org: Org) -> dict[tuple[str, str], str]:
    """(kind, name in the spec) -> the natural key its object must have."""
    keys = {
        ("tool", name): natural_key("tool", {**fields, "function": {"name": name}})
        if fields["type"] == "function"
        else fields["type"]
        for name, fields in org.tools.items()
    }
    keys.update({("phoneNumber", number): number for number in org.numbers})
    return {k: str(v) for k, v in keys.items()}


def resource_duplicates(org: Org, live: Live) -> list[str]:
    """No two tools of one natural key, no two records of one number, in the account."""
    problems = []
    for kind, objects in sorted(live.items()):
        ids: dict[str | None, list[str]] = {}
        for obj in objects:
            ids.setdefault(natural_key(kind, obj), []).append(str(obj["id"]))
        for key, same in sorted(ids.items(), key=lambda kv: str(kv[0])):
            if len(same) > 1:
                problems.append(f"{org.slug}: duplicate {kind} {key} {sorted(same)}")
    return problems


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


def active_resource_mappings(
    conn: psycopg.Connection[Any],
) -> dict[str, list[tuple[str, str, str]]]:
    """org id -> (kind, name, vapi id) of each active `resource_org_mapping` row."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for org_id, kind, name, vapi_id in conn.execute(
        "SELECT org_id::text, kind, name, vapi_id FROM resource_org_mapping"
        " WHERE inactive_at IS NULL ORDER BY 1, 2, 3"
    ).fetchall():
        out.setdefault(org_id, []).append((kind, name, vapi_id))
    return out


def resource_rows(
    conn: psycopg.Connection[Any],
) -> dict[str, dict[tuple[str, str], tuple[str | None, str]]]:
    """org id -> (kind, name) -> (vapi id, status) of its `vapi_resources` rows."""
    out: dict[str, dict[tuple[str, str], tuple[str | None, str]]] = {}
    for org_id, kind, name, vapi_id, status in conn.execute(
        "SELECT org_id::text, kind, name, vapi_id, status FROM vapi_resources"
    ).fetchall():
        out.setdefault(org_id, {})[(kind, name)] = (vapi_id, status)
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
    want = org.expected(role)
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


def recorded_templates(conn: psycopg.Connection[Any]) -> dict[str, dict[str, str | None]]:
    """org id -> role -> the template Postgres records its assistant was written from."""
    if not has_column(conn, "assistants", "template"):
        return {}
    out: dict[str, dict[str, str | None]] = {}
    for org_id, role, template in conn.execute(
        "SELECT org_id::text, role, template FROM assistants"
    ).fetchall():
        out.setdefault(org_id, {})[role] = template
    return out


def template_problems(org: Org, recorded: dict[str, str | None]) -> list[str]:
    """Each assistant's recorded template is the one its spec renders it from (None: written
    in full), so the next plan has no template move left."""
    return [
        f"{org.slug}.{role}: Postgres records template {recorded.get(role)!r}, spec uses {want!r}"
        for role in sorted(org.assistants)
        if recorded.get(role)
        != (want := (f"{TEMPLATE}@{org.templated[role]}" if role in org.templated else None))
    ]


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


def final_resource_problems(
    org: Org,
    assistants: list[dict[str, Any]],
    live: Live,
    mapped: list[tuple[str, str, str]],
    rows: dict[tuple[str, str], tuple[str | None, str]],
) -> list[str]:
    """Tools and numbers of one org in the specs, after the clean apply: no duplicate, no
    orphan (every object of the account has an active mapping row), the mapping exact (one
    active row per desired (kind, name), each at an object of the account with its natural
    key, the `vapi_resources` row ready at the same id), and the references exact (each
    assistant's `model.toolIds` its tools' ids, each number's `assistantId` its assistant's)."""
    problems = resource_duplicates(org, live)
    want = desired_keys(org)
    by_id = {kind: {str(o["id"]): o for o in objects} for kind, objects in live.items()}
    repeated = sorted(k for k, n in Counter((k, n) for k, n, _ in mapped).items() if n > 1)
    if repeated:
        problems.append(f"{org.slug}: more than one active mapping row for {repeated}")
    mapping = {(kind, name): vapi_id for kind, name, vapi_id in mapped}
    if set(mapping) != set(want):
        problems.append(f"{org.slug}: active mapping {sorted(mapping)} != desired {sorted(want)}")
    for (kind, name), vapi_id in sorted(mapping.items()):
        obj = by_id.get(kind, {}).get(vapi_id)
        if obj is None:
            problems.append(f"{org.slug}: mapped {kind} {name} {vapi_id} is not in the account")
        elif (kind, name) in want and natural_key(kind, obj) != want[(kind, name)]:
            problems.append(
                f"{org.slug}: mapped {kind} {name} {vapi_id} is {natural_key(kind, obj)}"
            )
    if set(rows) != set(want):
        problems.append(f"{org.slug}: vapi_resources {sorted(rows)} != desired {sorted(want)}")
    for (kind, name), (vapi_id, status) in sorted(rows.items()):
        if status != "ready" or vapi_id != mapping.get((kind, name)):
            problems.append(
                f"{org.slug}: vapi_resources {kind} {name} is {status} at {vapi_id},"
                f" mapped to {mapping.get((kind, name))}"
            )
    recorded = set(mapping.values())
    for kind, objects in sorted(live.items()):
        orphans = sorted(str(o["id"]) for o in objects if str(o["id"]) not in recorded)
        if orphans:
            problems.append(f"{org.slug}: {kind} {orphans} in the account, not in Postgres")
    return problems + reference_problems(org, assistants, live, mapping)


def reference_problems(
    org: Org,
    assistants: list[dict[str, Any]],
    live: Live,
    mapping: dict[tuple[str, str], str],
) -> list[str]:
    """Each assistant refers to its tools' ids, in its spec's order; each number to its
    assistant's id (none: unbound); the function tool carries the spec and the secret."""
    problems = []
    mine = {role: ids for (oid, role), ids in tagged_ids(assistants).items() if oid == org.org_id}
    by_id = {str(a["id"]): a for a in assistants}
    role_id = {role: ids[0] for role, ids in mine.items() if len(ids) == 1}
    for role, fields in sorted(org.assistants.items()):
        if role not in role_id:
            continue  # reported by final_org_problems
        model = by_id[role_id[role]].get("model") or {}
        has = model.get("toolIds") or []
        should = [mapping.get(("tool", name)) for name in fields["tools"]]
        if has != should:
            problems.append(f"{org.slug}.{role}: model.toolIds {has}, its tools are {should}")
    numbers = {str(o["id"]): o for o in live.get("phoneNumber", [])}
    for number, role in sorted(org.numbers.items()):
        obj = numbers.get(mapping.get(("phoneNumber", number), ""))
        if obj is None:
            continue  # reported as a mapping problem
        should_id = role_id.get(role) if role is not None else None
        if obj.get("assistantId") != should_id:
            problems.append(
                f"{org.slug}: {number} assistantId {obj.get('assistantId')}, its assistant"
                f" ({role or 'none'}) is {should_id}"
            )
    tools = {str(o["id"]): o for o in live.get("tool", [])}
    lookup = tools.get(mapping.get(("tool", "lookup"), ""))
    if lookup is not None and "lookup" in org.tools:
        said = org.tools["lookup"]["function"]["description"]
        if (lookup.get("function") or {}).get("description") != said:
            problems.append(f"{org.slug}: tool lookup's description is not the spec's")
        if ((lookup.get("server") or {}).get("headers") or {}).get("x-vapi-secret") != org.secret:
            problems.append(f"{org.slug}: tool lookup's server.headers lacks the current secret")
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
            ctl = Controller(
                StateWriter(pool),
                http,
                key,
                concurrency=4,
                create_grace_s=0,
                twilio_base_url=f"{vapi_url}/_stubs/twilio",
            )
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
    handmade: int = 0  # tools and numbers put in an account before the org's first apply
    # `<kind> <METHOD> <collection>` -> faults injected (the seed's), requests they answered
    fault_routes: Counter[str] = field(default_factory=Counter)
    fault_hits: Counter[str] = field(default_factory=Counter)
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
        self.armed: list[tuple[int, dict[str, Any]]] = []  # (round injected, fault) not used up
        self.introduced: set[int] = set()  # orgs whose accounts were seen by a round
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
            RECONCILER_TWILIO_BASE_URL=f"{self.vapi_url}/_stubs/twilio",
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
        for version in range(1, self.world.template_version + 1):
            template = root / "templates" / f"{TEMPLATE}-{version}.yaml"
            template.parent.mkdir(exist_ok=True)
            template.write_text(yaml.safe_dump(template_doc(version), sort_keys=False))
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

    def inject(self, n: int, rng: random.Random) -> list[str]:
        """Arms the faults left over from the last round (not used up: a write of that kind
        may come later), then the round's new ones. Returns how the new ones read."""
        kinds = []
        self.armed = [(r, f) for r, f in self.armed if n - r < FAULT_ROUNDS]
        for _ in range(rng.choice((0, 1, 2, 2, 3, 4))):
            kind, fault = random_fault(rng)
            delay = f" {fault['delay_ms']}ms" if "delay_ms" in fault else ""
            kinds.append(f"{fault['method']} {fault['path']} {kind}{delay} x{fault['times']}")
            self.armed.append((n, fault))
            self.result.faults += 1
            self.result.fault_kinds[kind] += 1
            self.result.fault_routes[fault_label(fault)] += 1
        for _, fault in self.armed:
            self.http.post("/_emulator/faults", json=fault).raise_for_status()
        return kinds

    def disarm(self) -> None:
        """Clears the faults (the checks' own requests must meet none), counting the requests
        they answered and keeping, with their times left, those not used up."""
        left = self.http.get("/_emulator/faults")
        left.raise_for_status()
        remaining = left.json()
        self.http.delete("/_emulator/faults").raise_for_status()
        kept: list[tuple[int, dict[str, Any]]] = []
        for n, fault in self.armed:  # the emulator lists them in order, used-up ones gone
            if remaining and fault_identity(remaining[0]) == fault_identity(fault):
                times = remaining.pop(0)["times"]
                self.result.fault_hits[fault_label(fault)] += fault["times"] - times
                kept.append((n, {**fault, "times": times}))
            else:
                self.result.fault_hits[fault_label(fault)] += fault["times"]
        self.armed = kept

    def handmade(self, n: int) -> list[str]:
        """An org's account may already hold one of its tools or numbers, made by hand before
        its first apply: Postgres knows nothing of it, only its natural key makes it the org's
        (adopted, never created a second time). Drawn from its own generator, per org."""
        made = []
        for org in self.world.current():
            if org.index in self.introduced:
                continue
            self.introduced.add(org.index)
            for number in org.all_numbers():  # its numbers are its Twilio account's
                self.http.post(
                    "/_emulator/twilio/numbers",
                    json={"accountSid": TWILIO["accountSid"], "phoneNumber": number},
                ).raise_for_status()
            rng = random.Random(f"chaos:{self.world.seed}:{n}:handmade:{org.index}")
            if rng.random() >= HANDMADE_SHARE:
                continue
            choices = [("tool", name) for name in sorted(org.tools)]
            choices += [("phoneNumber", number) for number in sorted(org.numbers)]
            kind, name = rng.choice(choices)
            if kind == "tool":
                body = dict(org.tools[name])
                if body["type"] == "function":
                    body["function"] = {**body["function"], "name": name}
            else:
                body = {"provider": "twilio", "number": name}
                body.update(twilioAccountSid=TWILIO["accountSid"], twilioAuthToken="by-hand")
            resp = self.http.post(
                RESOURCE_PATHS[kind], json=body, headers={"Authorization": f"Bearer {org.api_key}"}
            )
            resp.raise_for_status()
            made.append(f"{org.slug}.{kind}:{name}")
            self.result.handmade += 1
        return made

    def vapi_requests(self) -> int:
        """The Vapi requests the emulator has had (its admin and stub routes not counted)."""
        stats = self.http.get("/_emulator/stats")
        stats.raise_for_status()
        counts: dict[str, int] = stats.json()["requests"]
        return sum(n for route, n in counts.items() if "/_" not in route)

    def round(self, n: int, total: int) -> None:
        """Changes, faults, processes, then the checks that hold at any moment."""
        started = time.monotonic()
        rng = random.Random(f"chaos:{self.world.seed}:{n}")
        changes = change_specs(self.world, rng)
        spec_dir = self.write_specs(n)
        older = self.spec_dirs[-2] if len(self.spec_dirs) > 1 else None
        made = self.handmade(n)
        faults = self.inject(n, rng)
        slugs = [o.slug for o in self.world.current()]
        launches = plan_launches(rng, spec_dir, older, slugs)
        logs = self.tmp / "logs" / f"r{n:04d}"
        logs.mkdir(parents=True)
        ran = self.procs.run(launches, self.env, logs, self.vapi_requests)
        self.disarm()
        self.result.kills += sum(r.killed for r in ran)
        problems = self.note_processes(n, ran) + self.check_round()
        for what in problems:
            self.violate(n, what)
        self.result.rounds = n
        self.say(
            f"round {n}/{total} {time.monotonic() - started:4.1f}s"
            f" | specs {' '.join(changes) or '-'}"
            f"{' | by hand ' + ' '.join(made) if made else ''}"
            f" | faults {', '.join(faults) or '-'}"
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
        """No duplicate of any kind in every account ever used; every credential opens."""
        problems = []
        for org in self.world.orgs:
            problems += duplicate_problems(org, list_account(self.http, org.api_key))
            problems += resource_duplicates(org, list_resources(self.http, org.api_key))
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
        current = self.world.current()
        live = sum(len(o.assistants) for o in current)
        tools, numbers = sum(len(o.tools) for o in current), sum(len(o.numbers) for o in current)
        self.say(
            f"final {time.monotonic() - started:4.1f}s | clean apply --prune x{applies}"
            f" | {len(self.world.present)} orgs, {live} desired assistants, {tools} tools,"
            f" {numbers} numbers"
            f" | {'ok' if not problems else f'{len(problems)} VIOLATION(S)'}"
        )

    def check_final(self) -> list[str]:
        recorded = recorded_templates(self.conn)
        mapped = active_mappings(self.conn)
        mapped_resources, rows = active_resource_mappings(self.conn), resource_rows(self.conn)
        vapi, problems = stored_credentials(self.conn, self.key)
        accounts = self.http.get("/_emulator/accounts").json()
        for org in self.world.orgs:
            live = list_account(self.http, org.api_key)
            resources = list_resources(self.http, org.api_key)
            counted = accounts.get(fingerprint(org.api_key), {}).get("assistants", 0)
            if counted != len(live):
                problems.append(f"{org.slug}: listing shows {len(live)}, account has {counted}")
            if org.index in self.world.present:
                problems += final_org_problems(
                    org, live, mapped.get(org.org_id, {}), vapi.get(org.org_id)
                )
                problems += final_resource_problems(
                    org,
                    live,
                    resources,
                    mapped_resources.get(org.org_id, []),
                    rows.get(org.org_id, {}),
                )
                problems += template_problems(org, recorded.get(org.org_id, {}))
            else:  # a removed org's account is left as it was: only no duplicates
                problems += duplicate_problems(org, live)
                problems += resource_duplicates(org, resources)
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
    for what, counts in (
        ("faults injected", result.fault_routes),
        ("requests answered by a fault", result.fault_hits),
    ):
        say(f"{what}: {', '.join(f'{k}={v}' for k, v in sorted(counts.items())) or '-'}")
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
