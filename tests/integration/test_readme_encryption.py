"""The README's "Encrypting a spec" instructions, run as written: the `sops ...` commands are
taken from the README's own text (`<dir>` and `<slug>` filled in) and run with the `sops` on
PATH, from each working directory the paragraph allows, in a folder set up by `reconciler init`
and beside a `.sops.yaml` kept with the specs (as `specs/examples` has, with its demo key).
tests/unit/test_start.py checks the same rules with commands of its own; this one fails when
the README's words change and stop working.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import ROOT
from tests.helpers.serve import base_env

README = ROOT / "README.md"
EXAMPLES = ROOT / "specs" / "examples"
DIR, SLUG = "team", "hand"
PLAIN = (
    "apiVersion: reconciler/v1\nkind: Organization\n"
    f"metadata: {{id: 3f1c2d8e-6b0a-4a53-9d2e-1b7c9a0e4f11, slug: {SLUG}, name: Hand}}\n"
    "spec:\n  credentials:\n"
    "    vapi: {apiKey: key-written-by-hand, webhookSecret: secret-written-by-hand-0123456789}\n"
)


def readme_commands() -> tuple[list[str], list[str]]:
    """The README paragraph's two sops commands, as argv: (from the top, with --config)."""
    text = README.read_text()
    start = text.index("**Encrypting a spec.**")
    paragraph = text[start : text.index("\n\n", start)].replace("\n", " ")
    spans = [s for s in re.findall(r"`([^`]+)`", paragraph) if s.startswith("sops ")]
    filled = [shlex.split(s.replace("<dir>", DIR).replace("<slug>", SLUG)) for s in spans]
    assert len(filled) == 2, spans
    top, with_config = filled
    assert "--config" not in top and "--config" in with_config, spans
    return top, with_config


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    bin_dir = Path(sys.executable).parent
    return base_env(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    )


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{argv} in {cwd}: exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def _encrypted_to(path: Path) -> list[str]:
    """The age recipients of an encrypted spec; fails when a value is left in plaintext."""
    doc = yaml.safe_load(path.read_text())
    assert "by-hand" not in path.read_text(), path.read_text()
    assert str(doc["spec"]["credentials"]["vapi"]["apiKey"]).startswith("ENC[AES256_GCM,")
    return [entry["recipient"] for entry in doc["sops"]["age"]]


def _decrypts(spec: Path, env: dict[str, str]) -> None:
    """sops decrypts it with the key the environment gives (init's keys.txt, or the demo's)."""
    assert "key-written-by-hand" in _run(["sops", "decrypt", str(spec)], spec.parent, env)


def _recipient(sops_yaml: Path) -> str:
    rule = yaml.safe_load(sops_yaml.read_text())["creation_rules"][0]
    return str(rule["age"])


def test_in_a_folder_set_up_by_init_from_the_top_or_below(tmp_path: Path) -> None:
    top_cmd, _ = readme_commands()
    env = _env(tmp_path)
    top = tmp_path / "voice"
    top.mkdir()
    _run(["reconciler", "init"], top, env)
    spec = top / "specs" / DIR / f"{SLUG}.yaml"
    spec.parent.mkdir()
    recipient = _recipient(top / ".sops.yaml")
    relative = Path(top_cmd[-1])
    assert relative == spec.relative_to(top), top_cmd
    # from the top folder, as written; then from below it (the same file, named from there)
    for cwd in (top, top / "specs", spec.parent):
        spec.write_text(PLAIN)
        _run([*top_cmd[:-1], os.path.relpath(spec, cwd)], cwd, env)
        assert _encrypted_to(spec) == [recipient], cwd
        _decrypts(spec, env)
        assert "1 spec(s) valid" in _run(["reconciler", "validate", "specs"], top, env)


def test_beside_the_specs_name_the_config_or_run_from_that_folder(tmp_path: Path) -> None:
    """A top-level `.sops.yaml` (init's, to another key) is there too: the one beside the
    specs is used only because the command names it, or runs from its folder."""
    _, config_cmd = readme_commands()
    env = _env(tmp_path, SOPS_AGE_KEY_FILE=str(EXAMPLES / "demo.agekey"))
    top = tmp_path / "voice"
    top.mkdir()
    _run(["reconciler", "init", "--key-file", str(tmp_path / "init.agekey")], top, env)
    spec = top / "specs" / DIR / f"{SLUG}.yaml"
    spec.parent.mkdir()
    (spec.parent / ".sops.yaml").write_text((EXAMPLES / ".sops.yaml").read_text())
    demo = _recipient(EXAMPLES / ".sops.yaml")
    assert demo != _recipient(top / ".sops.yaml")

    spec.write_text(PLAIN)
    _run(config_cmd, top, env)  # as written, from the top folder
    assert _encrypted_to(spec) == [demo]
    _decrypts(spec, env)
    assert "1 spec(s) valid" in _run(["reconciler", "validate", str(spec.parent)], top, env)

    spec.write_text(PLAIN)
    _run(["sops", "encrypt", "-i", spec.name], spec.parent, env)  # "or run sops from there"
    assert _encrypted_to(spec) == [demo]
    _decrypts(spec, env)
    assert "1 spec(s) valid" in _run(["reconciler", "validate", str(spec.parent)], top, env)
