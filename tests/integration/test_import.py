"""`reconciler import`: an existing Vapi account (the emulator) written as a SOPS-encrypted spec
that the next `apply` adopts, with every refusal one line, exit 1, and no secret shown."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import importer
from reconciler.cli import main as cli_main
from reconciler.engine.diff import strip_server_owned
from reconciler.spec import loader
from tests.helpers import (
    SpecDir,
    assert_no_traceback,
    create_assistant,
    emulator_stats,
    fault,
    live,
    run_python,
)

KEY = "sk-import-5f3a9c1e7d"
SECRET = "whsec-live-0b7e2d94"
SLUG = "acme-dental"


@pytest.fixture
def account(emulator: str) -> dict[str, dict[str, Any]]:
    """Two untagged assistants worth importing and an unrelated third."""
    inbound = create_assistant(
        emulator,
        KEY,
        {
            "name": "Acme Receptionist",
            "firstMessage": "Thanks for calling Acme Dental!",
            "model": {
                "provider": "openai",
                "model": "gpt-4o",
                "temperature": 0.3,
                "messages": [{"role": "system", "content": "You book appointments."}],
            },
            "voice": {"provider": "11labs", "voiceId": "burt"},
            "server": {
                "url": "https://hooks.example.com/vapi",
                "timeoutSeconds": 20,
                "headers": {"x-vapi-secret": SECRET},
            },
            "metadata": {"team": "front-desk"},
        },
    )
    outbound = create_assistant(
        emulator,
        KEY,
        {
            "name": "Acme Reminders",
            "firstMessage": "Hi, this is Acme Dental.",
            "maxDurationSeconds": 300,
            "endCallPhrases": ["goodbye"],
        },
    )
    other = create_assistant(emulator, KEY, {"name": "Someone else's bot", "firstMessage": "Hello"})
    return {"inbound": inbound, "outbound": outbound, "other": other}


@pytest.fixture
def run_import(cli: Any, specs: SpecDir, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`reconciler import ...` through main(), with the key in $ACME_VAPI_KEY and --out the
    spec folder unless given."""
    monkeypatch.setenv("ACME_VAPI_KEY", KEY)

    def run(*argv: str) -> Any:
        args = ["import", "--vapi-key-env", "ACME_VAPI_KEY", "--slug", SLUG, *argv]
        if "--out" not in argv:
            args += ["--out", str(specs.root)]
        return cli(*args)

    return run


def spec_assistants(assistant: dict[str, Any]) -> dict[str, Any]:
    """What the spec must hold for a live assistant: no server-owned fields, no x-vapi-secret."""
    fields = strip_server_owned(assistant)
    server = fields.get("server")
    if isinstance(server, dict):
        headers = {
            k: v for k, v in (server.get("headers") or {}).items() if k.lower() != "x-vapi-secret"
        }
        fields["server"] = {k: v for k, v in server.items() if k != "headers"}
        if headers:
            fields["server"]["headers"] = headers
    return fields


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def assert_nothing_written(root: Path, before: list[Path]) -> None:
    assert files_under(root) == before
    assert not [p for p in root.iterdir() if p.name.startswith(importer.STAGE_PREFIX)]


def assert_one_line_error(run: Any, *needles: str) -> None:
    assert run.code == 1, run.out + run.err
    assert_no_traceback(run)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    for secret in (KEY, SECRET):
        assert secret not in run.out + run.err


# -- the file ----------------------------------------------------------------------------------


def test_import_writes_an_encrypted_spec_of_the_chosen_assistants(
    run_import: Any, specs: SpecDir, account: dict[str, dict[str, Any]]
) -> None:
    org_id = str(uuid.uuid4())
    run = run_import(
        "--inbound", account["inbound"]["id"], "--outbound", account["outbound"]["id"],
        "--org-id", org_id,
    )  # fmt: skip
    assert run.code == 0, run.out + run.err
    assert_no_traceback(run)
    assert KEY not in run.out + run.err and SECRET not in run.out + run.err
    assert "x-vapi-secret header" in run.out  # where the webhook secret came from

    path = specs.root / f"{SLUG}.yaml"
    raw = path.read_bytes()
    assert KEY.encode() not in raw and SECRET.encode() not in raw
    assert b"ENC[AES256_GCM" in raw
    assert path.stat().st_mode & 0o777 == 0o644 & ~_umask()
    assert sorted(p.name for p in specs.root.iterdir()) == [".sops.yaml", path.name]

    doc = yaml.safe_load(raw)
    assert "sops" in doc
    assert doc["metadata"] == {"id": org_id, "slug": SLUG, "name": "Acme Dental"}
    assert doc["spec"]["adopt"] == "byName"
    for role in ("inbound", "outbound"):
        assert doc["spec"]["assistants"][role] == spec_assistants(account[role])
    assert next(iter(doc["spec"]["assistants"]["inbound"])) == "name"
    assert "headers" not in doc["spec"]["assistants"]["inbound"]["server"]

    assert loader.validate_tree(specs.root).problems == []
    loaded = loader.load_tree(specs.root)  # decrypted with the test's age key
    assert loaded.problems == []
    (spec,) = loaded.specs
    vapi = spec.org.spec.credentials.vapi
    assert vapi is not None
    assert vapi.api_key.get_secret_value() == KEY
    assert vapi.webhook_secret.get_secret_value() == SECRET


def test_apply_after_import_adopts_the_assistants_and_creates_none(
    cli: Any,
    run_import: Any,
    specs: SpecDir,
    emulator: str,
    account: dict[str, dict[str, Any]],
) -> None:
    """Needs adoption by name in the planner (`spec.adopt: byName`)."""
    run = run_import("--inbound", account["inbound"]["id"], "--outbound", account["outbound"]["id"])
    assert run.code == 0, run.out + run.err
    org_id = yaml.safe_load((specs.root / f"{SLUG}.yaml").read_text())["metadata"]["id"]
    creates_before = emulator_stats(emulator)["POST /assistant"]

    run = cli("apply", str(specs.root))
    assert run.code == 0, run.out + run.err
    assert emulator_stats(emulator)["POST /assistant"] == creates_before
    by_id = {a["id"]: a for a in live(emulator, KEY)}
    assert len(by_id) == 3
    for role in ("inbound", "outbound"):
        meta = by_id[account[role]["id"]]["metadata"]
        assert {k: meta.get(k) for k in ("managedBy", "orgId", "role")} == {
            "managedBy": "reconciler",
            "orgId": org_id,
            "role": role,
        }
    assert by_id[account["inbound"]["id"]]["metadata"]["team"] == "front-desk"
    assert by_id[account["inbound"]["id"]]["server"]["headers"] == {"x-vapi-secret": SECRET}
    assert by_id[account["other"]["id"]] == account["other"]

    run = cli("plan", str(specs.root), "--detailed-exitcode")
    assert run.code == 0, run.out + run.err


def test_one_role_and_a_generated_webhook_secret(
    run_import: Any, specs: SpecDir, account: dict[str, dict[str, Any]]
) -> None:
    run = run_import("--outbound", account["outbound"]["id"], "--name", "ACME Dental Care")
    assert run.code == 0, run.out + run.err
    assert "webhook secret: generated" in run.out
    (spec,) = loader.load_tree(specs.root).specs
    assert spec.org.metadata.name == "ACME Dental Care"
    assert spec.org.spec.assistants.inbound is None
    vapi = spec.org.spec.credentials.vapi
    assert vapi is not None
    assert len(vapi.webhook_secret.get_secret_value()) >= 40
    assert vapi.webhook_secret.get_secret_value() not in run.out + run.err


def test_webhook_secret_env_wins_over_the_header(
    run_import: Any,
    specs: SpecDir,
    account: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACME_WEBHOOK_SECRET", "whsec-chosen-77aa")
    run = run_import(
        "--inbound", account["inbound"]["id"], "--webhook-secret-env", "ACME_WEBHOOK_SECRET"
    )  # fmt: skip
    assert run.code == 0, run.out + run.err
    assert "$ACME_WEBHOOK_SECRET" in run.out
    raw = (specs.root / f"{SLUG}.yaml").read_bytes()
    assert b"whsec-chosen-77aa" not in raw
    (spec,) = loader.load_tree(specs.root).specs
    vapi = spec.org.spec.credentials.vapi
    assert vapi is not None
    assert vapi.webhook_secret.get_secret_value() == "whsec-chosen-77aa"


def test_an_existing_file_needs_force(
    run_import: Any, specs: SpecDir, account: dict[str, dict[str, Any]]
) -> None:
    path = specs.root / f"{SLUG}.yaml"
    path.write_text("# hand-written\n")
    run = run_import("--inbound", account["inbound"]["id"])
    assert_one_line_error(run, str(path), "already exists", "--force")
    assert path.read_text() == "# hand-written\n"

    run = run_import("--inbound", account["inbound"]["id"], "--force")
    assert run.code == 0, run.out + run.err
    assert loader.validate_tree(specs.root).problems == []


def test_a_tagged_assistant_keeps_its_org_id(
    run_import: Any, specs: SpecDir, emulator: str
) -> None:
    org_id = str(uuid.uuid4())
    tag = {"managedBy": "reconciler", "orgId": org_id, "role": "inbound"}
    tagged = create_assistant(emulator, KEY, {"name": "Tagged", "metadata": {**tag, "team": "x"}})
    run = run_import("--inbound", tagged["id"])
    assert run.code == 0, run.out + run.err
    doc = yaml.safe_load((specs.root / f"{SLUG}.yaml").read_text())
    assert doc["metadata"]["id"] == org_id
    assert doc["spec"]["assistants"]["inbound"]["metadata"] == {"team": "x"}

    run = run_import("--outbound", tagged["id"], "--force")
    assert_one_line_error(run, tagged["id"], f"tagged by a reconciler for org {org_id}")


# -- refusals ----------------------------------------------------------------------------------


def test_missing_env_var(
    run_import: Any, specs: SpecDir, account: dict[str, dict[str, Any]], emulator: str
) -> None:
    before = files_under(specs.root)
    run = run_import("--vapi-key-env", "NO_SUCH_VAR_9", "--inbound", account["inbound"]["id"])
    assert_one_line_error(run, "NO_SUCH_VAR_9", "is not set")
    assert_nothing_written(specs.root, before)
    run = run_import(
        "--inbound", account["inbound"]["id"], "--webhook-secret-env", "NO_SUCH_SECRET_9"
    )  # fmt: skip
    assert_one_line_error(run, "NO_SUCH_SECRET_9", "is not set")
    assert_nothing_written(specs.root, before)


def test_wrong_key(
    run_import: Any, specs: SpecDir, monkeypatch: pytest.MonkeyPatch, emulator: str
) -> None:
    monkeypatch.setenv("ACME_VAPI_KEY", "invalid-key-4c1d")  # the emulator rejects this prefix
    before = files_under(specs.root)
    run = run_import("--inbound", str(uuid.uuid4()))
    assert_one_line_error(run, "cannot list the Vapi account", "401")
    assert "invalid-key-4c1d" not in run.out + run.err
    assert_nothing_written(specs.root, before)


def test_vapi_outage(
    run_import: Any, specs: SpecDir, emulator: str, account: dict[str, dict[str, Any]]
) -> None:
    fault(
        emulator,
        method="GET",
        path="/assistant",
        mode="error",
        status=503,
        times=None,
        retry_after="0",
    )
    before = files_under(specs.root)
    run = run_import("--inbound", account["inbound"]["id"])
    assert_one_line_error(run, "cannot list the Vapi account", "503")
    assert_nothing_written(specs.root, before)


@pytest.mark.parametrize("slug", ["Acme", "a", "acme_dental", "-acme", "acme\n", "../acme"])
def test_bad_slug(
    run_import: Any, specs: SpecDir, emulator: str, slug: str, account: dict[str, dict[str, Any]]
) -> None:
    before = files_under(specs.root)
    gets = emulator_stats(emulator)["GET /assistant"]
    run = run_import("--inbound", account["inbound"]["id"], f"--slug={slug}")
    assert_one_line_error(run, "--slug", "must match")
    assert emulator_stats(emulator)["GET /assistant"] == gets  # refused before any Vapi call
    assert_nothing_written(specs.root, before)


def test_no_sops_config(
    run_import: Any, tmp_path: Path, emulator: str, account: dict[str, dict[str, Any]]
) -> None:
    out = tmp_path / "elsewhere" / "specs"
    assert not any((d / ".sops.yaml").exists() for d in (out, *out.parents))
    gets = emulator_stats(emulator)["GET /assistant"]
    run = run_import("--inbound", account["inbound"]["id"], "--out", str(out))
    assert_one_line_error(run, "no .sops.yaml in", str(out))
    assert emulator_stats(emulator)["GET /assistant"] == gets
    assert not out.exists()


def test_unknown_assistant_id(
    run_import: Any, specs: SpecDir, account: dict[str, dict[str, Any]]
) -> None:
    missing = str(uuid.uuid4())
    before = files_under(specs.root)
    run = run_import("--inbound", account["inbound"]["id"], "--outbound", missing)
    assert_one_line_error(run, f"--outbound {missing}", "no such assistant", "ACME_VAPI_KEY")
    assert_nothing_written(specs.root, before)


def test_an_assistant_of_another_account_is_unknown(
    run_import: Any, specs: SpecDir, emulator: str, account: dict[str, dict[str, Any]]
) -> None:
    foreign = create_assistant(emulator, "sk-another-account-1", {"name": "Foreign"})
    run = run_import("--inbound", foreign["id"])
    assert_one_line_error(run, foreign["id"], "no such assistant")


def test_a_namesake_makes_adoption_ambiguous(
    run_import: Any, specs: SpecDir, emulator: str, account: dict[str, dict[str, Any]]
) -> None:
    twin = create_assistant(emulator, KEY, {"name": "Acme Reminders"})
    before = files_under(specs.root)
    run = run_import("--inbound", account["inbound"]["id"], "--outbound", account["outbound"]["id"])
    assert_one_line_error(
        run, account["outbound"]["id"], twin["id"], "'Acme Reminders'", "ambiguous"
    )
    assert_nothing_written(specs.root, before)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "give --inbound ID, --outbound ID or both"),
        (["--inbound", "same", "--outbound", "same"], "the same assistant"),
        (["--inbound", "x", "--org-id", "not-a-uuid"], "--org-id 'not-a-uuid': not a UUID"),
    ],
)
def test_argument_mistakes(run_import: Any, emulator: str, argv: list[str], needle: str) -> None:
    run = run_import(*argv)
    assert_one_line_error(run, needle)
    assert emulator_stats(emulator)["GET /assistant"] == 0


def test_differing_webhook_headers_need_a_choice(
    run_import: Any, specs: SpecDir, emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = {"url": "https://hooks.example.com/vapi"}
    one = create_assistant(
        emulator, KEY, {"name": "One", "server": {**server, "headers": {"X-Vapi-Secret": SECRET}}}
    )
    two = create_assistant(
        emulator,
        KEY,
        {"name": "Two", "server": {**server, "headers": {"x-vapi-secret": "whsec-2"}}},
    )
    run = run_import("--inbound", one["id"], "--outbound", two["id"])
    assert_one_line_error(run, "x-vapi-secret headers differ", "--webhook-secret-env")
    assert "whsec-2" not in run.err

    monkeypatch.setenv("ACME_WEBHOOK_SECRET", "whsec-chosen-3")
    run = run_import(
        "--inbound", one["id"], "--outbound", two["id"], "--webhook-secret-env", "ACME_WEBHOOK_SECRET"
    )  # fmt: skip
    assert run.code == 0, run.out + run.err
    doc = yaml.safe_load((specs.root / f"{SLUG}.yaml").read_text())
    assert doc["spec"]["assistants"]["inbound"]["server"] == server  # any case of the header


def test_a_value_vapi_shows_masked_is_refused(
    run_import: Any, specs: SpecDir, emulator: str
) -> None:
    masked = create_assistant(
        emulator,
        KEY,
        {
            "name": "Masked",
            "server": {"url": "https://h.example/v", "headers": {"Authorization": "Bearer ****"}},
        },
    )
    before = files_under(specs.root)
    run = run_import("--inbound", masked["id"])
    assert_one_line_error(run, masked["id"], "server.headers.Authorization", "masked")
    assert_nothing_written(specs.root, before)


def test_a_plaintext_secret_looking_value_is_warned_about(
    run_import: Any, specs: SpecDir, emulator: str
) -> None:
    token = "tok-9f8e7d6c5b4a"
    bot = create_assistant(
        emulator,
        KEY,
        {
            "name": "Bot",
            "server": {"url": "https://h.example/v", "headers": {"X-Api-Token": token}},
        },
    )
    run = run_import("--inbound", bot["id"])
    assert run.code == 0, run.out + run.err
    assert "warning:" in run.err and "server.headers.X-Api-Token" in run.err
    assert token not in run.out + run.err


def test_a_sops_rule_for_another_name_leaves_no_plaintext(
    run_import: Any, specs: SpecDir, account: dict[str, dict[str, Any]], age_identity: Any
) -> None:
    (specs.root / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: \\.json$\n    age: {age_identity[1]}\n"
    )
    before = files_under(specs.root)
    run = run_import("--inbound", account["inbound"]["id"])
    assert_one_line_error(run, f"{SLUG}.yaml: cannot encrypt", "no creation rule")
    assert_nothing_written(specs.root, before)
    assert not any(KEY.encode() in p.read_bytes() for p in files_under(specs.root))


def test_a_sops_rule_encrypting_everything_is_refused(
    run_import: Any, specs: SpecDir, account: dict[str, dict[str, Any]], age_identity: Any
) -> None:
    (specs.root / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: \\.yaml$\n    age: {age_identity[1]}\n"
    )
    before = files_under(specs.root)
    run = run_import("--inbound", account["inbound"]["id"])
    assert_one_line_error(run, "sops changed more than spec.credentials", "encrypted_regex")
    assert_nothing_written(specs.root, before)


# -- the pieces --------------------------------------------------------------------------------


def test_cmd_import_called_directly(
    specs: SpecDir,
    emulator: str,
    account: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VAPI_BASE_URL", emulator)
    monkeypatch.setenv("ACME_VAPI_KEY", KEY)
    parser = cli_main.build_parser()
    base = ["import", "--vapi-key-env", "ACME_VAPI_KEY", "--slug", SLUG, "--out", str(specs.root)]

    args = parser.parse_args([*base, "--inbound", account["inbound"]["id"]])
    assert args.func.resolve() is importer.cmd_import  # imported only when import runs
    assert importer.cmd_import(args) == 0
    assert capsys.readouterr().out.startswith(f"wrote {specs.root / SLUG}.yaml: org {SLUG} (")
    assert loader.validate_tree(specs.root).problems == []

    args = parser.parse_args([*base, "--inbound", "nope", "--force"])
    with pytest.raises(importer.ImportRefused, match="--inbound nope: no such assistant"):
        importer.cmd_import(args)


def test_importing_the_module_loads_no_heavy_library() -> None:
    code = (
        "import sys, reconciler.cli.importer\n"
        "heavy = {'psycopg', 'httpx', 'rich', 'starlette', 'uvicorn', 'pydantic', 'yaml'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    proc = run_python(code)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
