"""`reconciler diff --base REF`: the specs at a git revision against the working tree, with no
age key, no database and no network, in the same formats and exit codes as `plan`."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.secrets.sops import sops_binary
from tests.helpers import (
    SpecDir,
    add_key,
    create_assistant,
    git,
    key_of,
    org_doc,
    twilio_number,
)
from tests.helpers.serve import base_env, run_cli
from tests.helpers.templates import put, template, uses


def reconciler(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no key, no usable database and no reachable Vapi: offline or fail."""
    env = base_env(
        RECONCILER_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        VAPI_BASE_URL="http://127.0.0.1:1",
        SOPS_AGE_KEY_FILE="/nonexistent/age.key",
    )
    return run_cli(env, *args, cwd=cwd, timeout_s=120)


@pytest.fixture
def repo(specs: SpecDir) -> Path:
    root = specs.root.parent
    git(root, "init", "-q", "-b", "main")
    return root


def test_diff_base_offline(repo: Path, specs: SpecDir) -> None:
    acme, bravo, delta = org_doc("acme"), org_doc("bravo"), org_doc("delta")
    for doc in (acme, bravo, delta):
        specs.write(doc)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")

    clean = reconciler(repo, "diff", "specs", "--base", "main", "--detailed-exitcode")
    assert clean.returncode == 0, clean.stderr
    assert "0 to create, 0 to update, 0 to delete" in clean.stdout

    acme["spec"]["assistants"]["inbound"]["firstMessage"] = "Welcome back"
    specs.write(acme)  # re-encrypted: its credential ciphertext changes too
    bravo_path = specs.root / "bravo.yaml"
    text = bravo_path.read_text()  # only the plaintext part of bravo changes: no re-encryption
    bravo_path.write_text(text.replace("firstMessage: Hello!", "firstMessage: Hi there"))
    bravo["spec"]["assistants"]["inbound"]["firstMessage"] = "Hi there"
    specs.write(org_doc("charlie"))
    (specs.root / "delta.yaml").unlink()

    run = reconciler(
        repo, "diff", "specs", "--base", "main", "--format", "json", "--detailed-exitcode"
    )
    assert run.returncode == 2, run.stderr
    doc = json.loads(run.stdout)
    actions = {(c["address"], c["action"]) for c in doc["changes"]}
    assert ("org/acme/assistant/inbound", "update") in actions
    # encrypted anew (a new data key): whether its values changed is unknown offline
    assert ("org/acme/credential/vapi", "unknown") in actions
    assert ("org/bravo/assistant/inbound", "update") in actions
    assert not any(a.startswith("org/bravo/credential") for a, _ in actions)
    assert ("org/charlie", "create") in actions
    assert ("org/charlie/assistant/outbound", "create") in actions
    assert ("org/delta", "noop") in actions  # orphaned: nothing deleted without --prune
    change = next(c for c in doc["changes"] if c["address"] == "org/acme/assistant/inbound")
    assert change["before"] == {"firstMessage": "Hello!"}
    assert change["after"] == {"firstMessage": "Welcome back"}
    credential = next(c for c in doc["changes"] if c["address"] == "org/acme/credential/vapi")
    assert "encrypted anew" in credential["reason"] and credential["provider"] == "vapi"
    assert doc["summary"]["unknown"] == 1 and doc["summary"]["orphaned"] == 1
    assert doc["summary"]["delete"] == 0
    orphan = next(c for c in doc["changes"] if c["address"] == "org/delta")
    assert orphan["orphaned"] and "--prune" in orphan["reason"]
    pruned = reconciler(repo, "diff", "specs", "--base", "main", "--format", "json", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    deletes = {
        c["address"] for c in json.loads(pruned.stdout)["changes"] if c["action"] == "delete"
    }
    assert deletes == {"org/delta", "org/delta/assistant/inbound", "org/delta/assistant/outbound"}
    for secret in (acme, bravo):
        vapi = secret["spec"]["credentials"]["vapi"]
        assert vapi["apiKey"] not in run.stdout and vapi["webhookSecret"] not in run.stdout

    text_run = reconciler(repo, "diff", "specs", "--base", "main")
    assert text_run.returncode == 0, text_run.stderr
    assert "? credential vapi: unknown offline: the file was encrypted anew" in text_run.stdout
    assert "1 unknown offline" in text_run.stdout
    assert 'firstMessage: "Hello!" -> "Welcome back"' in text_run.stdout
    md = reconciler(repo, "diff", "specs", "--base", "main", "--format", "markdown")
    assert md.returncode == 0 and md.stdout.startswith("### Reconciler plan")
    assert "**1** unknown offline" in md.stdout
    assert "? credential vapi: unknown offline" in md.stdout


def test_diff_base_errors_are_one_line(repo: Path, specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    bad = reconciler(repo, "diff", "specs", "--base", "no-such-ref")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr
    new_dir = reconciler(repo, "diff", "specs", "--base", "main", "--detailed-exitcode")
    assert new_dir.returncode == 0, new_dir.stderr


def test_specs_absent_at_base_are_all_new(repo: Path, specs: SpecDir) -> None:
    (repo / "README").write_text("x")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "before the specs")
    specs.write(org_doc("acme"))
    run = reconciler(repo, "diff", "specs", "--base", "main", "--format", "json")
    assert run.returncode == 0, run.stderr
    assert ("org/acme", "create") in {
        (c["address"], c["action"]) for c in json.loads(run.stdout)["changes"]
    }


# -- diff --base agrees with plan against a converged state ---------------------------------

KINDS = ("create", "update", "delete", "adopt")


def _where(keys: list[str | int]) -> str:
    """sops's path: `["spec"]["phoneNumbers"][0]` (an int is a list index)."""
    return "".join(f"[{k}]" if isinstance(k, int) else f'["{k}"]' for k in keys)


def sops_set(path: Path, keys: list[str | int], value: Any) -> None:
    """`sops set`, as a user edits an encrypted spec: like `sops edit` and `sops unset`, it
    keeps the data key and the ciphertext of every value it does not touch."""
    where = _where(keys)
    subprocess.run(
        [sops_binary(), "set", str(path), where, json.dumps(value)],
        check=True,
        capture_output=True,
        cwd=path.parent,
    )


def sops_unset(path: Path, keys: list[str | int]) -> None:
    where = _where(keys)
    subprocess.run(
        [sops_binary(), "unset", str(path), where], check=True, capture_output=True, cwd=path.parent
    )


@dataclass
class Fleet:
    root: Path
    emulator: str
    docs: dict[str, dict[str, Any]]

    def path(self, slug: str) -> Path:
        return self.root / f"{slug}.yaml"


def _add_org(f: Fleet, specs: SpecDir) -> None:
    specs.write(org_doc("charlie"))


def _add_role(f: Fleet, specs: SpecDir) -> None:
    sops_set(f.path("acme"), ["spec", "assistants", "outbound"], {"name": "acme outbound"})


def _remove_role(f: Fleet, specs: SpecDir) -> None:
    sops_unset(f.path("bravo"), ["spec", "assistants", "outbound"])


def _remove_org(f: Fleet, specs: SpecDir) -> None:
    f.path("bravo").unlink()


def _rename_slug(f: Fleet, specs: SpecDir) -> None:
    sops_set(f.path("bravo"), ["metadata", "slug"], "bravo-two")
    git(f.root.parent, "mv", str(f.path("bravo")), str(f.path("bravo-two")))


def _rename_assistant(f: Fleet, specs: SpecDir) -> None:
    sops_set(f.path("bravo"), ["spec", "assistants", "inbound", "name"], "Bravo front desk")


def _rotate_webhook_secret(f: Fleet, specs: SpecDir) -> None:
    sops_set(f.path("acme"), ["spec", "credentials", "vapi", "webhookSecret"], "whsec-acme-new")


def _field_edit(f: Fleet, specs: SpecDir) -> None:
    sops_set(f.path("bravo"), ["spec", "assistants", "inbound", "firstMessage"], "Hi there")


def _forward_url(f: Fleet, specs: SpecDir) -> None:
    sops_set(f.path("acme"), ["spec", "webhook"], {"forwardUrl": "https://app.internal/acme"})


def _adopt(f: Fleet, specs: SpecDir) -> None:
    create_assistant(f.emulator, key_of(f.docs["acme"]), {"name": "acme desk"})  # untagged
    sops_set(f.path("acme"), ["spec", "adopt"], "byName")
    sops_set(f.path("acme"), ["spec", "assistants", "outbound"], {"name": "acme desk"})


def _new_id(f: Fleet, specs: SpecDir) -> None:
    """bravo's spec now names another org id: the old org is an orphan holding the slug."""
    sops_set(f.path("bravo"), ["metadata", "id"], str(uuid.uuid4()))


def _new_id_and_key(f: Fleet, specs: SpecDir) -> None:
    """bravo's spec names another org id, with a Vapi key of another account."""
    _new_id(f, specs)
    new_key = f"key-bravo-next-{uuid.uuid4().hex[:6]}"
    sops_set(f.path("bravo"), ["spec", "credentials", "vapi", "apiKey"], new_key)


def _reencrypt(f: Fleet, specs: SpecDir) -> None:
    subprocess.run(  # a new data key, every value the same
        [sops_binary(), "rotate", "-i", str(f.path("acme"))],
        check=True,
        capture_output=True,
        cwd=f.root,
    )


def _rotate_api_key(f: Fleet, specs: SpecDir) -> None:
    new_key = f"key-acme-next-{uuid.uuid4().hex[:6]}"
    add_key(f.emulator, key_of(f.docs["acme"]), new_key)  # the same Vapi account
    sops_set(f.path("acme"), ["spec", "credentials", "vapi", "apiKey"], new_key)


# -- telco: an org with tools and phone numbers ----------------------------------------------

TWILIO = {"accountSid": "AC" + "0" * 32, "authToken": "twilio-token-NEVER-SHOWN"}
MAIN, SECOND = "+14155550100", "+14155550101"


@pytest.fixture(autouse=True)
def telco_numbers(emulator: str) -> None:
    """telco's numbers are its Twilio account's (the emulator's Twilio stub lists them)."""
    for number in (MAIN, SECOND, "+14155550102"):
        twilio_number(emulator, TWILIO["accountSid"], number)


def telco_doc() -> dict[str, Any]:
    model = {"provider": "openai", "model": "gpt-4o"}
    doc = org_doc(
        "telco",
        assistants={
            "inbound": {"name": "telco inbound", "model": model, "tools": ["book", "end_call"]},
            "outbound": {"name": "telco outbound", "model": model, "tools": ["end_call"]},
        },
        extra_credentials={"twilio": dict(TWILIO), "elevenlabs": {"apiKey": "sk-11-telco"}},
    )
    doc["spec"]["tools"] = {
        "book": {  # its server carries the org's webhook secret, as `x-vapi-secret`
            "type": "function",
            "function": {"description": "Book an appointment"},
            "server": {"url": "https://hooks.example.com/book"},
        },
        "end_call": {"type": "endCall"},
        "transfer": {  # referred to by no assistant
            "type": "transferCall",
            "destinations": [{"type": "number", "number": "+14155550199"}],
        },
    }
    doc["spec"]["phoneNumbers"] = [
        {"provider": "twilio", "number": MAIN, "name": "Main line", "assistant": "inbound"},
        {"provider": "twilio", "number": SECOND, "assistant": "outbound"},
    ]
    doc["spec"]["outbound"] = {"phoneNumber": SECOND}
    return doc


def _add_tool(f: Fleet, specs: SpecDir) -> None:
    sops_set(f.path("telco"), ["spec", "tools", "voicemail"], {"type": "voicemail"})


def _change_tool(f: Fleet, specs: SpecDir) -> None:
    where = ["spec", "tools", "book", "function", "description"]
    sops_set(f.path("telco"), where, "Book a visit")


def _remove_tool(f: Fleet, specs: SpecDir) -> None:
    sops_unset(f.path("telco"), ["spec", "tools", "transfer"])


def _rename_tool(f: Fleet, specs: SpecDir) -> None:
    """end_call is now hang_up: the same endCall tool (its natural key), so the same id in
    each assistant's `model.toolIds`."""
    path = f.path("telco")
    sops_unset(path, ["spec", "tools", "end_call"])
    sops_set(path, ["spec", "tools", "hang_up"], {"type": "endCall"})
    sops_set(path, ["spec", "assistants", "inbound", "tools", 1], "hang_up")
    sops_set(path, ["spec", "assistants", "outbound", "tools", 0], "hang_up")


def _add_number(f: Fleet, specs: SpecDir) -> None:
    added = {"provider": "twilio", "number": "+14155550102", "assistant": "outbound"}
    sops_set(f.path("telco"), ["spec", "phoneNumbers", 2], added)


def _rebind_number(f: Fleet, specs: SpecDir) -> None:
    """The main line now reaches the outbound assistant."""
    sops_set(f.path("telco"), ["spec", "phoneNumbers", 0, "assistant"], "outbound")


def _remove_number(f: Fleet, specs: SpecDir) -> None:
    """The main line (bound to the inbound assistant) leaves the spec."""
    sops_unset(f.path("telco"), ["spec", "phoneNumbers", 0])


def _assistant_tools(f: Fleet, specs: SpecDir) -> None:
    sops_set(f.path("telco"), ["spec", "assistants", "outbound", "tools", 1], "transfer")


def _outbound_number(f: Fleet, specs: SpecDir) -> None:
    sops_set(f.path("telco"), ["spec", "outbound", "phoneNumber"], MAIN)


def _rotate_twilio(f: Fleet, specs: SpecDir) -> None:
    where = ["spec", "credentials", "twilio", "authToken"]
    sops_set(f.path("telco"), where, f"twilio-token-{uuid.uuid4().hex[:6]}")


def _telco_webhook_secret(f: Fleet, specs: SpecDir) -> None:
    where = ["spec", "credentials", "vapi", "webhookSecret"]
    sops_set(f.path("telco"), where, "whsec-telco-new")


def _reencrypt_telco(f: Fleet, specs: SpecDir) -> None:
    subprocess.run(
        [sops_binary(), "rotate", "-i", str(f.path("telco"))],
        check=True,
        capture_output=True,
        cwd=f.root,
    )


def _add_elevenlabs(f: Fleet, specs: SpecDir) -> None:
    """A provider key every assistant of the org carries (a Vapi dynamic credential)."""
    where = ["spec", "credentials", "elevenlabs"]
    sops_set(f.path("bravo"), where, {"apiKey": f"sk-11-{uuid.uuid4().hex[:6]}"})


def _rotate_elevenlabs(f: Fleet, specs: SpecDir) -> None:
    where = ["spec", "credentials", "elevenlabs", "apiKey"]
    sops_set(f.path("telco"), where, f"sk-11-{uuid.uuid4().hex[:6]}")


def _remove_elevenlabs(f: Fleet, specs: SpecDir) -> None:
    sops_unset(f.path("telco"), ["spec", "credentials", "elevenlabs"])


def _remove_telco(f: Fleet, specs: SpecDir) -> None:
    f.path("telco").unlink()


# (name, change, flags, addresses offline may not know)
TABLE: list[Any] = [
    ("add org", _add_org, (), set()),
    ("add role", _add_role, (), set()),
    ("remove role", _remove_role, (), set()),
    ("remove role --prune", _remove_role, ("--prune",), set()),
    ("remove org (orphan)", _remove_org, (), set()),
    ("remove org --prune", _remove_org, ("--prune",), set()),
    ("rename slug", _rename_slug, (), set()),
    ("rename assistant", _rename_assistant, (), set()),
    ("rotate webhook secret", _rotate_webhook_secret, (), set()),
    ("field edit", _field_edit, (), set()),
    ("forward url", _forward_url, (), set()),
    ("rotate api key, same account", _rotate_api_key, (), set()),
    ("new id for a slug (refused)", _new_id, (), set()),
    ("new id and key for a slug --prune", _new_id_and_key, ("--prune",), set()),
    ("new id for a slug, same key --prune", _new_id, ("--prune",), set()),
    ("adopt by name", _adopt, (), {"org/acme/assistant/outbound"}),
    (
        "re-encrypted, unchanged",
        _reencrypt,
        (),
        {"org/acme/credential/vapi", "org/acme/assistant/inbound"},
    ),
    ("tool added", _add_tool, (), set()),
    ("tool changed", _change_tool, (), set()),
    ("tool removed", _remove_tool, (), set()),
    ("tool removed --prune", _remove_tool, ("--prune",), set()),
    ("tool renamed, same natural key", _rename_tool, (), set()),
    ("number added", _add_number, (), set()),
    ("number rebound to the other assistant", _rebind_number, (), set()),
    ("number removed (released)", _remove_number, (), set()),
    ("number removed --prune", _remove_number, ("--prune",), set()),
    ("assistant tools list changed", _assistant_tools, (), set()),
    ("outbound number changed", _outbound_number, (), set()),
    ("twilio credentials rotated", _rotate_twilio, (), set()),
    ("webhook secret of a tool's server rotated", _telco_webhook_secret, (), set()),
    ("org with tools and numbers removed --prune", _remove_telco, ("--prune",), set()),
    ("elevenlabs key added", _add_elevenlabs, (), set()),
    ("elevenlabs key rotated", _rotate_elevenlabs, (), set()),
    ("elevenlabs key removed", _remove_elevenlabs, (), set()),
    (
        "tools and numbers re-encrypted, unchanged",
        _reencrypt_telco,
        (),
        {
            "org/telco/credential/vapi",
            "org/telco/credential/twilio",
            "org/telco/credential/elevenlabs",
            "org/telco/assistant/inbound",  # they carry the ElevenLabs key
            "org/telco/assistant/outbound",
            "org/telco/tool/book",
            f"org/telco/phoneNumber/{MAIN}",
            f"org/telco/phoneNumber/{SECOND}",
        },
    ),
]


def _acted(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["address"], c["action"]) for c in doc["changes"] if c["action"] in KINDS}


# the rows from here on change telco (or need an org with every kind): the others run without
# it, which keeps the table's cost where it is needed
FIRST_TELCO_ROW = "tool added"


def _params() -> list[Any]:
    out = []
    telco = False
    for row in TABLE:
        marks = getattr(row, "marks", ())  # a pytest.param already: its first value is its id
        name, change, flags, unknowable = row.values if marks else row
        telco = telco or name == FIRST_TELCO_ROW
        out.append(pytest.param(change, flags, unknowable, telco, id=name, marks=marks))
    return out


@pytest.mark.parametrize(("change", "flags", "unknowable", "with_telco"), _params())
def test_diff_base_counts_equal_plan_against_a_converged_state(
    specs: SpecDir,
    cli: Any,
    emulator: str,
    change: Callable[[Fleet, SpecDir], None],
    flags: tuple[str, ...],
    unknowable: set[str],
    with_telco: bool,
) -> None:
    """Each spec change is a git commit over a base that was applied (converged). `diff
    --base` (offline) and `plan` (Postgres and the emulator) then name the same actions at the
    same addresses, so their counts are equal; where offline cannot know (adoption by name, a
    file encrypted anew), it says `unknown` there, and `plan` does one of the things it says."""
    repo = specs.root.parent
    acme = org_doc(
        "acme",
        assistants={
            "inbound": {
                "name": "acme inbound",
                "firstMessage": "Hello!",
                "server": {"url": "https://hooks.example.com/vapi"},  # carries the secret
            }
        },
    )
    docs = {"acme": acme, "bravo": org_doc("bravo")}
    if with_telco:
        docs["telco"] = telco_doc()
    fleet = Fleet(specs.root, emulator, docs)
    for doc in docs.values():
        specs.write(doc)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    applied = cli("apply", str(specs.root))
    assert applied.code == 0, applied.out + applied.err
    assert cli("plan", str(specs.root), "--detailed-exitcode").code == 0  # converged

    change(fleet, specs)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "change")
    diffed = cli("diff", str(specs.root), "--base", "HEAD~1", "--format", "json", *flags)
    planned = cli("plan", str(specs.root), "--format", "json", *flags)
    assert diffed.code == planned.code, (diffed.out + diffed.err, planned.out + planned.err)
    assert planned.code in (0, 1) and not diffed.err and not planned.err
    offline, online = json.loads(diffed.out), json.loads(planned.out)
    assert [e.get("org") for e in offline["errors"]] == [e.get("org") for e in online["errors"]]

    unknown = {c["address"] for c in offline["changes"] if c["action"] == "unknown"}
    assert unknown == unknowable, offline["changes"]
    assert offline["summary"]["unknown"] == len(unknowable)
    assert online["summary"].get("unknown", 0) == 0
    for c in online["changes"]:  # where offline did not know, plan does one of those things
        if c["address"] in unknown:
            assert c["action"] in ("create", "update", "adopt", "noop"), c
    known_online = {(a, k) for a, k in _acted(online) if a not in unknown}
    assert _acted(offline) == known_online, (offline["changes"], online["changes"])
    for kind in KINDS:
        at_unknown = sum(1 for a, k in _acted(online) if a in unknown and k == kind)
        assert offline["summary"][kind] == online["summary"][kind] - at_unknown, kind
    assert offline["summary"]["orphaned"] == online["summary"]["orphaned"]
    if not unknowable:
        assert {k: offline["summary"][k] for k in KINDS} == {k: online["summary"][k] for k in KINDS}


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_diff_base_calls_a_file_that_fails_failing_never_gone(
    repo: Path, specs: SpecDir, fmt: str
) -> None:
    acme, bravo = org_doc("acme"), org_doc("bravo")
    specs.write(acme)
    specs.write(bravo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    bravo["metadata"]["name"] = "x" * 300  # invalid, its id still readable
    specs.write(bravo, encrypt=False)

    run = reconciler(repo, "diff", "specs", "--base", "main", "--prune", "--format", fmt)
    assert run.returncode == 1, run.stdout + run.stderr  # a file failed
    if fmt == "json":
        doc = json.loads(run.stdout)
        assert doc["summary"]["orphaned"] == 0 and doc["summary"]["delete"] == 0
        assert [c for c in doc["changes"] if c["org"] == "bravo"] == []
        assert any("bravo.yaml" in e.get("file", "") for e in doc["errors"])
    else:
        said = (run.stdout + run.stderr).lower()
        assert "bravo.yaml" in said
        assert "orphan" not in said and "gone" not in said and "retire" not in said


def test_diff_base_shows_a_templates_blast_radius_offline(repo: Path, specs: SpecDir) -> None:
    """Two orgs on a template at the base; the head moves both to version 2, which changes the
    greeting: the same blast radius line and causes as `plan`, with no key or database."""
    put(specs.root, "templates/front-desk.yaml", template())
    put(specs.root, "templates/front-desk-2.yaml", template(2, firstMessage="Hi ${practiceName}!"))
    docs = [org_doc(slug, assistants={"inbound": uses()}) for slug in ("alpha", "bravo")]
    for doc in docs:
        specs.write(doc)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    for doc in docs:  # only the plaintext part changes: no re-encryption
        path = specs.root / f"{doc['metadata']['slug']}.yaml"
        path.write_text(path.read_text().replace("front-desk@1", "front-desk@2"))
    run = reconciler(repo, "diff", "specs", "--base", "main", "--detailed-exitcode")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "template front-desk 1 → 2: 2 orgs, 2 change, 0 unchanged through overrides" in (
        run.stdout
    )
    assert "(from template front-desk@2)" in run.stdout
