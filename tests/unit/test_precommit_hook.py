"""`python -m reconciler.cli.hooks no-plaintext`, the check behind the pre-commit hook
(tests/integration/test_pre_commit_hooks.py runs it through pre-commit)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from reconciler.cli.hooks import file_problems, main
from tests.helpers import ROOT

EXAMPLES = ROOT / "specs" / "examples"


def test_encrypted_specs_and_other_files_pass(tmp_path: Path) -> None:
    files = [EXAMPLES / name for name in ("acme-dental.yaml", "bright-smiles.yaml")]
    other = {
        "k8s.yaml": "apiVersion: v1\nkind: Secret\n---\nkind: ConfigMap\ndata: {a: b}\n",
        "broken.yaml": "a: [\n",
        "notes.txt": "spec:\n  credentials: plain\n",  # not YAML by its name
        "list.yml": "- 1\n- 2\n",
        "no-credentials.yaml": "spec: {assistants: {}}\n",
    }
    for name, text in other.items():
        (tmp_path / name).write_text(text)
        files.append(tmp_path / name)
    assert main(["no-plaintext", *map(str, files)]) == 0


def test_a_decrypted_spec_is_refused_by_field_never_by_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load((EXAMPLES / "acme-dental.yaml").read_text())
    doc.pop("sops")
    doc["spec"]["credentials"]["twilio"]["authToken"] = "plaintext-value-42"
    target = tmp_path / "acme.yml"
    target.write_text(yaml.safe_dump(doc))
    assert main(["no-plaintext", str(target)]) == 1
    out = capsys.readouterr()
    assert f"{target}: spec.credentials.twilio.authToken: plaintext secret" in out.out
    assert f"{target}: sops: credentials are present but the file is not SOPS-encrypted" in out.out
    assert "plaintext-value-42" not in out.out + out.err
    assert "1 file(s) refused" in out.err


def test_an_age_identity_is_refused_in_any_file(tmp_path: Path) -> None:
    key = tmp_path / "keys.txt"
    shutil.copy(EXAMPLES / "demo.agekey", key)
    (problem,) = file_problems(key)
    assert "an age identity" in str(problem)
    assert "AGE-SECRET-KEY-1" in str(problem) and len(str(problem)) < 200


def test_an_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    (problem,) = file_problems(tmp_path / "missing.yaml")
    assert "cannot read" in str(problem)
