"""Spec files: `reconciler validate` rejections (file and field path in every problem line),
decryption with the real sops binary, and the committed JSON schema."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pyrage
import pytest
import yaml

from reconciler.cli.main import main
from reconciler.spec.loader import Problem, load_tree, validate_tree
from reconciler.spec.models import Organization
from tests.helpers import ROOT, SpecDir, org_doc


def run_validate(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str, str]:
    """Exit code, stdout lines, stdout and stderr of `reconciler validate ROOT`."""
    code = main(["validate", str(root)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), out, err


def problem_lines(lines: list[str], file_name: str, field: str) -> list[str]:
    """Lines that name `file_name` (as the file) and the exact `field` path."""
    at = rf"/{re.escape(file_name)}(?::\d+:\d+)?: {re.escape(field)}: "
    return [ln for ln in lines if re.search(at, ln)]


def one_problem(problems: list[Problem], file_name: str, field: str) -> Problem:
    found = [p for p in problems if p.path.name == file_name and p.field == field]
    assert found, f"no problem for {file_name} {field}: {[str(p) for p in problems]}"
    return found[0]


def assert_rejected(
    specs: SpecDir,
    capsys: pytest.CaptureFixture[str],
    file_name: str,
    field: str,
    message: str | None = None,
) -> str:
    """Both the API and the CLI reject the tree with a problem naming file and field."""
    result = validate_tree(specs.root)
    problem = one_problem(result.problems, file_name, field)
    if message is not None:
        assert message in problem.message
    assert file_name not in {s.path.name for s in result.specs}

    code, lines, out, err = run_validate(specs.root, capsys)
    assert code == 1
    matching = problem_lines(lines, file_name, field)
    assert matching, out
    assert "spec(s) valid" not in out
    assert "file(s) failed" in err
    assert "Traceback" not in out + err
    return matching[0]


def plain_doc(slug: str, **kwargs: Any) -> dict[str, Any]:
    """A spec without credentials or assistants: valid unencrypted."""
    doc = org_doc(slug, **kwargs)
    doc["spec"] = {}
    return doc


# -- valid -------------------------------------------------------------------------------------


def test_valid_encrypted_specs(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    for slug in ("acme", "globex", "initech"):
        specs.write(org_doc(slug))
    result = validate_tree(specs.root)
    assert result.problems == []
    assert sorted(s.path.name for s in result.specs) == [
        "acme.yaml",
        "globex.yaml",
        "initech.yaml",
    ]

    code, lines, _out, err = run_validate(specs.root, capsys)
    assert code == 0
    assert lines == ["3 spec(s) valid"]
    assert err == ""


def test_sops_config_is_skipped(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    assert (specs.root / ".sops.yaml").exists()
    specs.write(org_doc("acme"))
    code, lines, _out, _err = run_validate(specs.root, capsys)
    assert code == 0
    assert lines == ["1 spec(s) valid"]


def test_nested_folders_are_searched(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    (specs.root / "eu" / "west").mkdir(parents=True)
    (specs.root / "us").mkdir()
    specs.write(org_doc("acme"), name="eu/west/acme")
    specs.write(org_doc("globex"), name="us/globex")
    specs.write(org_doc("initech"))
    result = validate_tree(specs.root)
    assert result.problems == []
    assert {s.path.relative_to(specs.root).as_posix() for s in result.specs} == {
        "eu/west/acme.yaml",
        "us/globex.yaml",
        "initech.yaml",
    }
    code, lines, _out, _err = run_validate(specs.root, capsys)
    assert (code, lines) == (0, ["3 spec(s) valid"])


def test_empty_folder_is_a_problem(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    # only .sops.yaml inside: it is not a spec
    result = validate_tree(specs.root)
    assert result.specs == []
    assert len(result.problems) == 1
    assert "no spec files found" in result.problems[0].message

    code, lines, out, _err = run_validate(specs.root, capsys)
    assert code == 1
    assert any(str(specs.root) in ln and "no spec files found" in ln for ln in lines), out
    assert "spec(s) valid" not in out


# -- schema errors -----------------------------------------------------------------------------


def test_missing_metadata_id(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    doc = org_doc("acme")
    del doc["metadata"]["id"]
    specs.write(doc)
    line = assert_rejected(specs, capsys, "acme.yaml", "metadata.id", "Field required")
    assert "Field required" in line


def test_bad_uuid(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    specs.write(org_doc("acme", org_id="not-a-uuid"))
    line = assert_rejected(specs, capsys, "acme.yaml", "metadata.id")
    assert "UUID" in line


def test_unknown_top_level_field(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    doc = org_doc("acme")
    doc["status"] = {"ready": True}
    specs.write(doc)
    assert_rejected(specs, capsys, "acme.yaml", "status", "Extra inputs are not permitted")


def test_unknown_field_under_spec(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    doc = org_doc("acme")
    doc["spec"]["squads"] = ["+15550100"]
    specs.write(doc)
    assert_rejected(specs, capsys, "acme.yaml", "spec.squads", "Extra inputs are not permitted")


def test_more_assistants_by_name(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    """Besides the roles, assistants by name; a name must be a plain identifier."""
    doc = org_doc("acme")
    doc["spec"]["assistants"]["sidekick"] = {"name": "Sidekick"}
    specs.write(doc)
    (spec,) = load_tree(specs.root).specs
    assert list(spec.org.spec.assistants.by_role()) == ["inbound", "outbound", "sidekick"]
    doc["spec"]["assistants"]["Side_kick"] = {"name": "Sidekick"}
    specs.write(doc)
    assert_rejected(specs, capsys, "acme.yaml", "spec.assistants", "assistant names ['Side_kick']")


def test_unknown_assistant_field(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    doc = org_doc("acme")
    doc["spec"]["assistants"]["inbound"]["greeting"] = "Hi"  # Vapi calls it firstMessage
    specs.write(doc)
    assert_rejected(
        specs,
        capsys,
        "acme.yaml",
        "spec.assistants.inbound.greeting",
        "Extra inputs are not permitted",
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("apiVersion", "reconciler/v2"), ("kind", "Organisation")],
)
def test_wrong_api_version_or_kind(
    specs: SpecDir, capsys: pytest.CaptureFixture[str], field: str, value: str
) -> None:
    doc = org_doc("acme")
    doc[field] = value
    specs.write(doc)
    line = assert_rejected(specs, capsys, "acme.yaml", field)
    assert "Input should be" in line


def test_slug_not_matching_pattern(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    specs.write(org_doc("Acme_Corp"))
    line = assert_rejected(specs, capsys, "Acme_Corp.yaml", "metadata.slug")
    assert "pattern" in line


def test_slug_differs_from_file_name(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    specs.write(org_doc("acme"), name="acme-corp")
    line = assert_rejected(specs, capsys, "acme-corp.yaml", "metadata.slug")
    assert "'acme' differs from the file name 'acme-corp'" in line


# -- cross-file --------------------------------------------------------------------------------


def test_id_repeated_across_files(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    org_id = str(uuid.uuid4())
    first = specs.write(org_doc("acme", org_id=org_id))
    specs.write(org_doc("globex", org_id=org_id))
    line = assert_rejected(specs, capsys, "globex.yaml", "metadata.id")
    assert org_id in line
    assert f"already used by {first}" in line
    # both are left out: neither may take over the other's state
    result = validate_tree(specs.root)
    assert result.specs == []
    assert any(p.path == first and "also used by" in p.message for p in result.problems)


def test_slug_repeated_across_files(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    (specs.root / "eu").mkdir()
    (specs.root / "us").mkdir()
    first = specs.write(org_doc("acme"), name="eu/acme")
    second = specs.write(org_doc("acme"), name="us/acme")
    result = validate_tree(specs.root)
    problem = {p.path: p.message for p in result.problems if p.field == "metadata.slug"}
    assert set(problem) == {first, second}
    assert f"already used by {first}" in problem[second]
    assert f"also used by {second}" in problem[first]
    assert result.specs == []

    code, lines, out, _err = run_validate(specs.root, capsys)
    assert code == 1
    assert f"{second}:5:5: metadata.slug: acme is already used by {first}" in lines, out


# -- credentials must be encrypted -------------------------------------------------------------


def test_plaintext_credentials(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    api_key = "sk-live-PLAINTEXT-4f1d9c0e7b"
    secret = "whsec-PLAINTEXT-a8e2b77c"
    specs.write(org_doc("acme", api_key=api_key, secret=secret), encrypt=False)
    line = assert_rejected(
        specs, capsys, "acme.yaml", "spec.credentials.vapi.apiKey", "plaintext secret"
    )
    assert "plaintext secret" in line
    result = validate_tree(specs.root)
    one_problem(result.problems, "acme.yaml", "spec.credentials.vapi.webhookSecret")

    main(["validate", str(specs.root)])
    out, err = capsys.readouterr()
    assert api_key not in out + err
    assert secret not in out + err
    assert all(api_key not in str(p) and secret not in str(p) for p in result.problems)


def test_plaintext_leaf_added_to_encrypted_file(
    specs: SpecDir, capsys: pytest.CaptureFixture[str]
) -> None:
    path = specs.write(org_doc("acme"))
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["credentials"]["resend"] = {"apiKey": "re_PLAINTEXT_31c9e0"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    line = assert_rejected(
        specs, capsys, "acme.yaml", "spec.credentials.resend.apiKey", "plaintext secret"
    )
    assert "re_PLAINTEXT_31c9e0" not in line
    # the encrypted leaves are fine: only the plaintext one is reported
    assert [p.field for p in validate_tree(specs.root).problems] == [
        "spec.credentials.resend.apiKey"
    ]


# -- assistants --------------------------------------------------------------------------------


def test_assistant_name_too_long(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    doc = org_doc("acme")
    doc["spec"]["assistants"]["inbound"]["name"] = "x" * 41
    specs.write(doc)
    line = assert_rejected(specs, capsys, "acme.yaml", "spec.assistants.inbound.name")
    assert "40 characters" in line


def test_assistant_name_of_40_is_fine(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    doc = org_doc("acme")
    doc["spec"]["assistants"]["inbound"]["name"] = "x" * 40
    specs.write(doc)
    assert run_validate(specs.root, capsys)[:2] == (0, ["1 spec(s) valid"])


def test_assistants_without_vapi_credentials(
    specs: SpecDir, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = org_doc("acme")
    del doc["spec"]["credentials"]
    specs.write(doc, encrypt=False)
    line = assert_rejected(specs, capsys, "acme.yaml", "spec")
    assert "credentials.vapi is required" in line


def test_reserved_metadata_keys(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    doc = org_doc("acme")
    doc["spec"]["assistants"]["inbound"]["metadata"] = {"team": "sales", "managedBy": "me"}
    specs.write(doc)
    line = assert_rejected(specs, capsys, "acme.yaml", "spec.assistants.inbound.metadata")
    assert "managedBy" in line
    assert "reserved" in line


# -- YAML --------------------------------------------------------------------------------------


def test_broken_yaml_names_the_line(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    (specs.root / "acme.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Organization\nmetadata:\n  slug: [acme\n  name: x\n"
    )
    result = validate_tree(specs.root)
    problem = one_problem(result.problems, "acme.yaml", "")
    assert re.search(r"invalid YAML \(line \d+\)", problem.message), problem.message

    code, lines, out, _err = run_validate(specs.root, capsys)
    assert code == 1
    assert any(re.search(r"/acme\.yaml: invalid YAML \(line \d+\)", ln) for ln in lines), out


def test_duplicate_yaml_key(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    (specs.root / "acme.yaml").write_text(
        "apiVersion: reconciler/v1\n"
        "kind: Organization\n"
        "metadata:\n"
        f"  id: {uuid.uuid4()}\n"
        "  slug: acme\n"
        "  name: Acme\n"
        "  slug: acme\n"
    )
    result = validate_tree(specs.root)
    problem = one_problem(result.problems, "acme.yaml", "")
    assert "duplicate key 'slug'" in problem.message
    assert "(line 7)" in problem.message

    code, lines, _out, _err = run_validate(specs.root, capsys)
    assert code == 1
    assert any("acme.yaml: invalid YAML (line 7): duplicate key 'slug'" in ln for ln in lines)


def test_unhashable_yaml_key_is_a_problem(
    specs: SpecDir, capsys: pytest.CaptureFixture[str]
) -> None:
    (specs.root / "acme.yaml").write_text("apiVersion: reconciler/v1\n? [a, b]\n: 1\n")
    (specs.root / "globex.yaml").write_text("kind: [\n")
    code, lines, out, err = run_validate(specs.root, capsys)
    assert code == 1
    assert any("/acme.yaml: invalid YAML (line 2)" in ln for ln in lines), out + err
    assert any("/globex.yaml: invalid YAML" in ln for ln in lines), out + err
    assert "internal error" not in err


def test_top_level_list(specs: SpecDir, capsys: pytest.CaptureFixture[str]) -> None:
    (specs.root / "acme.yaml").write_text(yaml.safe_dump([plain_doc("acme")]))
    code, lines, out, _err = run_validate(specs.root, capsys)
    assert code == 1
    assert any(ln.endswith("/acme.yaml: expected a mapping at the top level") for ln in lines), out


def test_one_broken_file_does_not_hide_others(
    specs: SpecDir, capsys: pytest.CaptureFixture[str]
) -> None:
    specs.write(org_doc("good"))
    broken = org_doc("broken")
    broken["spec"]["assistants"]["inbound"]["name"] = "y" * 41
    specs.write(broken)
    (specs.root / "garbled.yaml").write_text("apiVersion: [\n")
    specs.write(org_doc("zeta", org_id="123"))

    result = validate_tree(specs.root)
    assert {p.path.name for p in result.problems} == {
        "broken.yaml",
        "garbled.yaml",
        "zeta.yaml",
    }
    assert [s.path.name for s in result.specs] == ["good.yaml"]

    code, lines, out, err = run_validate(specs.root, capsys)
    assert code == 1
    assert problem_lines(lines, "broken.yaml", "spec.assistants.inbound.name"), out
    assert problem_lines(lines, "zeta.yaml", "metadata.id"), out
    assert any("/garbled.yaml: invalid YAML" in ln for ln in lines), out
    assert "3 file(s) failed (3 problem(s))" in err


# -- load_tree: decryption ---------------------------------------------------------------------


def test_load_tree_decrypts(specs: SpecDir) -> None:
    api_key = "sk-load-7c1e9a55d3"
    secret = "whsec-load-02bd41f6"
    org_id = str(uuid.uuid4())
    specs.write(org_doc("acme", org_id=org_id, api_key=api_key, secret=secret))

    result = load_tree(specs.root)
    assert result.problems == []
    assert len(result.specs) == 1
    org = result.specs[0].org
    assert isinstance(org, Organization)
    assert str(org.metadata.id) == org_id
    vapi = org.spec.credentials.vapi
    assert vapi is not None
    assert vapi.api_key.get_secret_value() == api_key
    assert vapi.webhook_secret.get_secret_value() == secret
    for text in (repr(org), str(org), repr(vapi), repr(result)):
        assert api_key not in text
        assert secret not in text
    assert org.spec.assistants.inbound is not None
    assert org.spec.assistants.inbound.firstMessage == "Hello!"


def _tamper(path: Path, field: str) -> None:
    """Changes one character of the base64 data of `field`'s ENC[...] value."""
    text = path.read_text()
    match = re.search(rf"{field}: ENC\[AES256_GCM,data:(.)", text)
    assert match is not None, text
    i = match.start(1)
    path.write_text(text[:i] + ("B" if text[i] != "B" else "C") + text[i + 1 :])


def test_load_tree_tampered_ciphertext(specs: SpecDir) -> None:
    api_key = "sk-tamper-9e03f1aa"
    bad = specs.write(org_doc("acme", api_key=api_key))
    specs.write(org_doc("globex"))
    _tamper(bad, "apiKey")

    result = load_tree(specs.root)
    assert [s.path.name for s in result.specs] == ["globex.yaml"]
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.path == bad
    text = str(problem)
    assert "\n" not in text
    assert text.startswith(f"{bad}: cannot decrypt")
    assert "Traceback" not in text
    assert api_key not in text


def test_load_tree_wrong_age_key(
    specs: SpecDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = specs.write(org_doc("acme"))
    other = tmp_path / "other-key.txt"
    other.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(other))

    result = load_tree(specs.root)
    assert result.specs == []
    assert len(result.problems) == 1
    text = str(result.problems[0])
    assert result.problems[0].path == path
    assert text.startswith(f"{path}: cannot decrypt")
    assert "age key" in text
    assert "\n" not in text
    assert "Traceback" not in text


def test_load_tree_keeps_validate_problems(specs: SpecDir) -> None:
    specs.write(org_doc("acme"))
    specs.write(org_doc("globex"), name="other")
    result = load_tree(specs.root)
    assert [s.path.name for s in result.specs] == ["acme.yaml"]
    one_problem(result.problems, "other.yaml", "metadata.slug")


# -- schema ------------------------------------------------------------------------------------


def test_schema_check_passes_on_committed_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["schema", "--check"]) == 0
    out, _err = capsys.readouterr()
    assert "schemas/org.schema.json is up to date" in out


def test_the_examples_fit_the_schema_and_a_misspelt_template_field_does_not() -> None:
    """Editors check spec files with the committed schema: an assistant written in full and
    one made from a template both fit it (as committed, sops metadata aside)."""
    import json

    import jsonschema

    schema = json.loads((ROOT / "schemas" / "org.schema.json").read_text())
    check = jsonschema.Draft202012Validator(schema)
    files = sorted((ROOT / "specs" / "examples").glob("*.yaml"))
    docs = {p.name: yaml.safe_load(p.read_text()) for p in files if p.name != ".sops.yaml"}
    templated = 0
    for name, doc in docs.items():
        doc.pop("sops")
        assert [e.message for e in check.iter_errors(doc)] == [], name
        templated += sum("template" in a for a in doc["spec"]["assistants"].values())
    assert templated >= 2
    doc = docs["acme-dental.yaml"]
    doc["spec"]["assistants"]["inbound"]["with_"] = {}
    assert list(check.iter_errors(doc))


def test_schema_check_fails_on_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "org.schema.json"
    stale.write_text('{"title": "Organization"}\n')
    assert main(["schema", "--check", "--output", str(stale)]) == 1
    _out, err = capsys.readouterr()
    assert f"{stale} is stale" in err
    assert stale.read_text() == '{"title": "Organization"}\n'  # --check never writes

    missing = tmp_path / "missing.json"
    assert main(["schema", "--check", "--output", str(missing)]) == 1
    assert not missing.exists()

    assert main(["schema", "--output", str(stale)]) == 0
    assert main(["schema", "--check", "--output", str(stale)]) == 0


@pytest.mark.parametrize("key", ["sk-café-123", "sk-tab\there", " sk-padded", "sk-\u201cq\u201d"])
def test_vapi_secrets_must_fit_in_an_http_header(key: str) -> None:
    from pydantic import ValidationError

    from reconciler.spec.models import Organization

    doc = org_doc("acme", api_key=key)
    with pytest.raises(ValidationError) as exc:
        Organization.model_validate(doc)
    [error] = exc.value.errors(include_input=False)
    assert error["loc"][-1] == "apiKey"
    assert "printable ASCII" in error["msg"]
    assert key.strip() not in str(error)


# -- where in the file, and "did you mean" ---------------------------------------------------

POSITIONED_SPEC = """\
apiVersion: reconciler/v1
kind: Organization
metadata:
  id: 3f1c2d8e-6b0a-4a53-9d2e-1b7c9a0e4f11
  slug: acme
  name: Acme
spec:
  assistants:
    inbound:
      name: Acme
      firstMesage: Hello
    outbound:
      voice: {provider: 11labs}
      maxDurationSeconds: 5
  webhok: {}
"""


def test_problems_name_line_and_column_and_suggest_a_close_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(POSITIONED_SPEC)
    code, lines, _, err = run_validate(tmp_path, capsys)
    assert code == 1
    assert sorted(lines) == sorted(
        [
            f"{path}:11:7: spec.assistants.inbound.firstMesage: Extra inputs are not "
            "permitted; did you mean 'firstMessage'?",
            # a missing field: where its parent is
            f"{path}:12:5: spec.assistants.outbound.name: Field required",
            f"{path}:14:7: spec.assistants.outbound.maxDurationSeconds: Input should be "
            "greater than or equal to 10",
            f"{path}:15:3: spec.webhok: Extra inputs are not permitted; did you mean 'webhook'?",
        ]
    )
    assert err.splitlines() == ["1 file(s) failed (4 problem(s))"]


def test_no_suggestion_when_nothing_is_close(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(POSITIONED_SPEC.replace("  webhok: {}\n", "  squads: []\n"))
    (problem,) = [p for p in validate_tree(tmp_path).problems if p.field == "spec.squads"]
    assert problem.message == "Extra inputs are not permitted"
    assert (problem.line, problem.column) == (15, 3)
