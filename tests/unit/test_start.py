"""Starting a specs folder (issue 15): `init`, `org new`, `edit` and `set` in-process, against the
real sops binary and real age keys, with HOME pointed at a temporary folder (nothing of the
user's is read or written) and the working directory elsewhere, holding a `.sops.yaml` that
must never apply. The subprocess promises (no plaintext on disk, the edit folder removed on
SIGINT/SIGTERM) and `plan` after `set` are in tests/integration/test_start.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyrage
import pytest
import yaml

from reconciler.cli.main import main
from reconciler.secrets import native, sops
from reconciler.spec import loader
from tests.helpers import Run, assert_no_traceback, git, sops_rules

KEY = "sk-start-4c1d9e2b7a"
SECRET = "whsec-start-0f3e8a61"
SLUG = "acme-dental"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """HOME in tmp_path (sops's default keys.txt under it), no key variables, and a working
    directory whose own `.sops.yaml` encrypts to a stranger's key."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CONFIG_HOME", "SOPS_AGE_KEY_FILE", "SOPS_AGE_KEY", "SOPS_CONFIG", "EDITOR"):
        monkeypatch.delenv(name, raising=False)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    stranger = pyrage.x25519.Identity.generate().to_public()
    (cwd / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: .*\n    age: {stranger}\n"
        "stores:\n  yaml:\n    indent: 8\n"
    )
    monkeypatch.chdir(cwd)
    return {
        "home": home,
        "repo": tmp_path / "repo",
        "keys": home / ".config" / "sops" / "age" / "keys.txt",
    }


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


def one_line_error(result: Run, *needles: str) -> None:
    assert result.code == 1, result.out + result.err
    assert_no_traceback(result)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    for secret in (KEY, SECRET):
        assert secret not in result.out + result.err


def snapshot(*roots: Path) -> dict[Path, tuple[int, bytes]]:
    """Every file and folder under `roots`: (mode, content)."""
    out: dict[Path, tuple[int, bytes]] = {}
    for root in roots:
        for p in [root, *root.rglob("*")] if root.exists() else []:
            mode = stat.S_IMODE(p.lstat().st_mode)
            out[p] = (mode, p.read_bytes() if p.is_file() else b"")
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def initialised(run: Any, env: dict[str, Path]) -> Path:
    result = run("init", str(env["repo"]))
    assert result.code == 0, result.out + result.err
    return env["repo"] / "specs"


def new_org(run: Any, specs: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> Path:
    monkeypatch.setenv("ACME_VAPI_KEY", KEY)
    monkeypatch.setenv("ACME_WEBHOOK_SECRET", SECRET)
    result = run(
        "org", "new", SLUG, "--path", str(specs), "--vapi-key-env", "ACME_VAPI_KEY",
        "--webhook-secret-env", "ACME_WEBHOOK_SECRET", *extra,
    )  # fmt: skip
    assert result.code == 0, result.out + result.err
    return specs / f"{SLUG}.yaml"


def decrypted(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(sops.decrypt_bytes(path, path.read_bytes()))
    return doc


# -- init --------------------------------------------------------------------------------------


def test_init_makes_the_folder_the_key_and_the_rules_then_changes_nothing(
    run: Any, env: dict[str, Path]
) -> None:
    repo, keys = env["repo"], env["keys"]
    first = run("init", str(repo))
    assert first.code == 0, first.out + first.err
    assert (repo / "specs").is_dir()
    # the key: where sops looks with no setting, 0600 in 0700 folders, one identity
    assert keys.is_file()
    assert mode(keys) == 0o600
    assert [mode(p) for p in (keys.parent, keys.parent.parent, env["home"] / ".config")] == [
        0o700
    ] * 3
    identity = next(ln for ln in keys.read_text().splitlines() if ln.startswith("AGE-SECRET"))
    recipient = str(pyrage.x25519.Identity.from_str(identity).to_public())
    # .sops.yaml: the loader's rules for specs/, to that recipient
    rules = yaml.safe_load((repo / ".sops.yaml").read_text())["creation_rules"]
    assert rules == [
        {
            "path_regex": r"^specs/.*\.ya?ml$",
            "encrypted_regex": "^credentials$",
            "mac_only_encrypted": True,
            "age": recipient,
        }
    ]
    assert {"keys.txt", "*.agekey"} <= set((repo / ".gitignore").read_text().splitlines())
    assert identity not in first.out + first.err
    nxt = first.out.split("next:\n", 1)[1].splitlines()
    assert [line.split()[:3] for line in nxt] == [
        ["reconciler", "org", "new"],
        ["reconciler", "validate", str(repo / "specs")],
        ["reconciler", "plan", str(repo / "specs")],
    ]

    before = snapshot(repo, env["home"])
    again = run("init", str(repo))
    assert again.code == 0, again.err
    assert "nothing changed" in again.out
    assert snapshot(repo, env["home"]) == before


def test_init_appends_to_an_existing_keys_txt_and_tightens_its_mode(
    run: Any, env: dict[str, Path]
) -> None:
    keys = env["keys"]
    keys.parent.mkdir(parents=True)
    mine = pyrage.x25519.Identity.generate()
    keys.write_text(f"# my own key\n{mine}")  # no final newline
    keys.chmod(0o644)
    assert run("init", str(env["repo"])).code == 0
    lines = keys.read_text().splitlines()
    assert lines[:2] == ["# my own key", str(mine)]
    assert len([ln for ln in lines if ln.startswith("AGE-SECRET-KEY-")]) == 2
    assert mode(keys) == 0o600


def test_init_refuses_a_default_key_inside_a_git_work_tree(
    run: Any, env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    git(dotfiles, "init", "-q")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(dotfiles / "config"))
    before = snapshot(tmp_path)
    result = run("init", str(env["repo"]))
    one_line_error(result, "inside the git work tree", str(dotfiles), "--key-file")
    assert snapshot(tmp_path) == before  # no key, no repo, nothing

    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(dotfiles / "age.txt"))
    one_line_error(run("init", str(env["repo"])), "inside the git work tree")
    assert snapshot(tmp_path) == before


def test_init_keeps_a_named_key_file_inside_the_repo_and_git_ignores_it(
    run: Any, env: dict[str, Path]
) -> None:
    repo = env["repo"]
    repo.mkdir()
    git(repo, "init", "-q")
    key_file = repo / "secrets" / "age.key"
    result = run("init", str(repo), "--key-file", str(key_file))
    assert result.code == 0, result.err
    assert mode(key_file) == 0o600 and mode(key_file.parent) == 0o700
    assert not env["keys"].exists()
    assert "/secrets/age.key" in (repo / ".gitignore").read_text().splitlines()
    git(repo, "check-ignore", "-q", str(key_file))  # exits 1 (raises) if not ignored
    # other commands do not look there: init says how to point them at it
    assert f"export SOPS_AGE_KEY_FILE={key_file}" in result.out


def test_init_with_a_sops_yaml_whose_key_is_not_here_changes_nothing(
    run: Any, env: dict[str, Path]
) -> None:
    repo = env["repo"]
    repo.mkdir()
    theirs = pyrage.x25519.Identity.generate().to_public()
    (repo / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: ^specs/\n    encrypted_regex: ^credentials$\n"
        f"    age: {theirs}\n"
    )
    before = snapshot(env["home"], repo)
    one_line_error(run("init", str(repo)), str(theirs), "no identity for it")
    assert snapshot(env["home"], repo) == before


# -- org new -----------------------------------------------------------------------------------


def test_org_new_writes_a_valid_spec_encrypted_by_the_sops_yaml_nearest_to_it(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = initialised(run, env)
    path = new_org(run, specs, monkeypatch, "--server-url", "https://hooks.example.com/vapi")
    raw = path.read_bytes()
    assert KEY.encode() not in raw and SECRET.encode() not in raw
    assert sorted(p.name for p in specs.iterdir()) == [path.name]  # no temporary file left
    assert run("validate", str(specs)).code == 0
    # encrypted to the repository's key (not the working directory's .sops.yaml), which every
    # command finds with no setting: the loader, and the sops binary run from anywhere
    recipient = yaml.safe_load((env["repo"] / ".sops.yaml").read_text())["creation_rules"][0]
    assert [a["recipient"] for a in yaml.safe_load(raw)["sops"]["age"]] == [recipient["age"]]
    result = loader.load_tree(specs)
    assert result.problems == []
    org = result.specs[0].org
    assert org.spec.credentials.vapi is not None
    assert org.spec.credentials.vapi.api_key.get_secret_value() == KEY
    assert org.spec.credentials.vapi.webhook_secret.get_secret_value() == SECRET
    assert set(org.spec.assistants.by_role()) == {"inbound", "outbound"}
    assert all(
        a.server == {"url": "https://hooks.example.com/vapi"}
        for a in org.spec.assistants.by_role().values()
    )
    done = subprocess.run(
        [sops.sops_binary(), "decrypt", str(path)],
        capture_output=True,
        env={"HOME": str(env["home"]), "PATH": os.environ.get("PATH", "")},
        check=True,
    )
    assert KEY.encode() in done.stdout


def test_org_new_in_a_folder_still_to_be_made_follows_the_rule_for_its_path(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = initialised(run, env)
    config = env["repo"] / ".sops.yaml"
    config.write_text(config.read_text().replace(r"^specs/.*\.ya?ml$", r"^specs/prod/[^/]+\.yaml$"))
    path = new_org(run, specs / "prod", monkeypatch)
    assert path.parent.is_dir()
    assert run("validate", str(specs)).code == 0


def test_org_new_generates_the_webhook_secret_and_adds_providers(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = initialised(run, env)
    monkeypatch.setenv("ACME_VAPI_KEY", KEY)
    monkeypatch.setenv("RESEND", "re_123")
    result = run(
        "org", "new", SLUG, "--path", str(specs), "--vapi-key-env", "ACME_VAPI_KEY",
        "--resend-key-env", "RESEND", "--name", "Acme Dental Clinics of the North-East",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "webhookSecret generated" in result.out
    doc = decrypted(specs / f"{SLUG}.yaml")
    assert len(doc["spec"]["credentials"]["vapi"]["webhookSecret"]) >= 40
    assert doc["spec"]["credentials"]["resend"] == {"apiKey": "re_123"}
    assert all(len(a["name"]) <= 40 for a in doc["spec"]["assistants"].values())
    assert run("validate", str(specs)).code == 0


def test_org_new_prompts_without_echo_when_no_variable_is_given(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = initialised(run, env)
    asked: list[str] = []

    def getpass(prompt: str, stream: Any = None) -> str:
        asked.append(prompt)
        return KEY

    monkeypatch.setattr("getpass.getpass", getpass)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    result = run("org", "new", SLUG, "--path", str(specs))
    assert result.code == 0, result.err
    assert asked == ["the Vapi private API key (not shown): "]
    assert decrypted(specs / f"{SLUG}.yaml")["spec"]["credentials"]["vapi"]["apiKey"] == KEY


def test_org_new_refusals_are_one_line_and_write_nothing(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    specs = initialised(run, env)
    monkeypatch.setenv("ACME_VAPI_KEY", KEY)
    before = snapshot(specs)
    one_line_error(
        run("org", "new", SLUG, "--path", str(specs)), "no terminal", "--vapi-key-env"
    )  # stdin is not a terminal under pytest: no prompt that would echo
    one_line_error(
        run("org", "new", SLUG, "--path", str(specs), "--vapi-key-env", "UNSET_VAR_X"),
        "UNSET_VAR_X is not set",
    )
    one_line_error(
        run("org", "new", "Bad_Slug", "--path", str(specs), "--vapi-key-env", "ACME_VAPI_KEY"),
        "slug",
    )
    lonely = tmp_path / "lonely"
    one_line_error(
        run("org", "new", SLUG, "--path", str(lonely), "--vapi-key-env", "ACME_VAPI_KEY"),
        "no .sops.yaml",
        "reconciler init",
    )
    assert not lonely.exists()
    assert snapshot(specs) == before
    path = new_org(run, specs, monkeypatch)
    written = path.read_bytes()
    one_line_error(
        run("org", "new", SLUG, "--path", str(specs), "--vapi-key-env", "ACME_VAPI_KEY"),
        "already exists",
    )
    assert path.read_bytes() == written


# -- set ---------------------------------------------------------------------------------------


def test_set_changes_one_value_and_keeps_the_rest(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = initialised(run, env)
    path = new_org(run, specs, monkeypatch)
    path.chmod(0o640)
    monkeypatch.setenv("NEW_SECRET", "whsec-rotated-77")
    result = run(
        "set", str(path), "spec.credentials.vapi.webhookSecret", "--from-env", "NEW_SECRET"
    )
    assert result.code == 0, result.err
    assert "whsec-rotated-77" not in result.out + result.err
    doc = decrypted(path)
    assert doc["spec"]["credentials"]["vapi"] == {
        "apiKey": KEY,
        "webhookSecret": "whsec-rotated-77",
    }
    assert mode(path) == 0o640
    assert run("validate", str(specs)).code == 0

    # the same value again: the file is left byte for byte
    written = path.read_bytes()
    again = run("set", str(path), "spec.credentials.vapi.webhookSecret", "--from-env", "NEW_SECRET")
    assert again.code == 0 and "untouched" in again.out
    assert path.read_bytes() == written

    # --stdin drops one trailing newline; list items by [N]
    monkeypatch.setattr(sys, "stdin", _Stdin(b"Be very brief.\n"))
    path_arg = "spec.assistants.inbound.model.messages[0].content"
    assert run("set", str(path), path_arg, "--stdin").code == 0
    assert decrypted(path)["spec"]["assistants"]["inbound"]["model"]["messages"][0] == {
        "role": "system",
        "content": "Be very brief.",
    }


class _Stdin:
    def __init__(self, data: bytes) -> None:
        import io

        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


def test_set_keeps_comments(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = initialised(run, env)
    path = new_org(run, specs, monkeypatch)
    text = sops.decrypt_bytes(path, path.read_bytes()).replace(
        b"metadata:", b"# who this org is\nmetadata:"
    )
    path.write_bytes(sops.encrypt_bytes(text, path))
    monkeypatch.setenv("NEW_KEY", "sk-new-1")
    assert run("set", str(path), "spec.credentials.vapi.apiKey", "--from-env", "NEW_KEY").code == 0
    plain = sops.decrypt_bytes(path, path.read_bytes())
    assert b"# who this org is\nmetadata:" in plain
    assert b"apiKey: sk-new-1" in plain


def test_set_refusals_name_file_and_path(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = initialised(run, env)
    path = new_org(run, specs, monkeypatch)
    written = path.read_bytes()
    monkeypatch.setenv("V", "whsec-typo-1")
    monkeypatch.setenv("EMPTY", "")
    cases = [
        (("spec.credentials.vapi.webhookSecrt", "--from-env", "V"), "Extra inputs"),
        (("spec.assistants.inbound.name", "--from-env", "EMPTY"), "EMPTY is empty"),
        (("spec.assistants.inbound.model.messages[3].content", "--from-env", "V"), "1 item"),
        (("spec..x", "--from-env", "V"), "expected dotted keys"),
        (("spec.credentials.vapi.apiKey", "--from-env", "NOPE_UNSET"), "NOPE_UNSET is not set"),
    ]
    for argv, needle in cases:
        result = run("set", str(path), *argv)
        one_line_error(result, needle)
        assert "whsec-typo-1" not in result.out + result.err
        if "is not set" not in needle and "empty" not in needle and "dotted" not in needle:
            assert str(path) in result.err and argv[0] in result.err
    assert path.read_bytes() == written
    one_line_error(
        run("set", str(env["repo"] / ".sops.yaml"), "a", "--from-env", "V"), "not SOPS-encrypted"
    )


# -- edit --------------------------------------------------------------------------------------

EDITOR_SCRIPT = r"""
import json, os, pathlib, stat, sys
path = pathlib.Path(sys.argv[1])
log = pathlib.Path(os.environ["EDIT_LOG"])
seen = json.loads(log.read_text()) if log.exists() else []
text = path.read_text()
seen.append({"path": str(path), "dir_mode": stat.S_IMODE(path.parent.stat().st_mode),
             "file_mode": stat.S_IMODE(path.stat().st_mode), "text": text})
log.write_text(json.dumps(seen))
steps = json.loads(os.environ["EDIT_STEPS"])
step = steps[min(len(seen), len(steps)) - 1]
if step == "fail":
    sys.exit(3)
for old, new in step:
    text = text.replace(old, new)
path.write_text(text)
if os.environ.get("EDIT_ALSO_TOUCH"):
    with open(os.environ["EDIT_ALSO_TOUCH"], "a") as other:
        other.write("# touched\n")
"""


@pytest.fixture
def editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """EDITOR is a python script applying one step per opening: a list of (old, new)
    replacements, or "fail" (exit 3). Returns what it saw each time."""
    script = tmp_path / "editor.py"
    script.write_text(EDITOR_SCRIPT)
    log = tmp_path / "edit-log.json"
    monkeypatch.setenv("EDITOR", f"{sys.executable} {script}")
    monkeypatch.setenv("EDIT_LOG", str(log))

    def steps(*planned: Any) -> Any:
        import json

        if log.exists():
            log.unlink()
        monkeypatch.setenv("EDIT_STEPS", json.dumps(planned))
        return lambda: json.loads(log.read_text()) if log.exists() else []

    return steps


def test_edit_saves_a_valid_change_and_removes_its_private_folder(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, editor: Any
) -> None:
    specs = initialised(run, env)
    path = new_org(run, specs, monkeypatch)
    seen = editor([("name: Acme Dental Reminders", "name: Acme Callbacks  # renamed")])
    result = run("edit", str(path))
    assert result.code == 0, result.err
    assert "saved" in result.out
    [opened] = seen()
    assert KEY in opened["text"]  # the editor sees the decrypted spec...
    assert opened["dir_mode"] == 0o700 and opened["file_mode"] == 0o600
    assert not Path(opened["path"]).parent.exists()  # ...from a folder that is gone
    plain = sops.decrypt_bytes(path, path.read_bytes())
    assert b"# renamed\n            name: Acme Callbacks\n" in plain  # comments are kept
    assert KEY.encode() not in path.read_bytes()
    assert run("validate", str(specs)).code == 0


def test_edit_without_change_or_with_a_failing_editor_leaves_the_file(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, editor: Any
) -> None:
    specs = initialised(run, env)
    path = new_org(run, specs, monkeypatch)
    written = path.read_bytes()
    editor([])
    result = run("edit", str(path))
    assert result.code == 0 and "no change" in result.out
    editor([("    name: Acme Dental\n", "    name:    Acme Dental   \n\n")])  # same document
    assert "no change" in run("edit", str(path)).out
    seen = editor("fail")
    one_line_error(run("edit", str(path)), "exited with status 3", "nothing changed")
    assert not Path(seen()[0]["path"]).parent.exists()
    assert path.read_bytes() == written


def test_edit_never_overwrites_a_file_changed_while_it_was_edited(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, editor: Any
) -> None:
    specs = initialised(run, env)
    path = new_org(run, specs, monkeypatch)
    monkeypatch.setenv("EDIT_ALSO_TOUCH", str(path))  # someone else's commit lands meanwhile
    editor([("name: Acme Dental Reminders", "name: Acme Recalls")])
    one_line_error(run("edit", str(path)), "changed on disk", "nothing written")
    assert path.read_bytes().endswith(b"# touched\n")


def test_edit_reopens_an_invalid_spec_with_the_problem_on_top(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, editor: Any
) -> None:
    specs = initialised(run, env)
    path = new_org(run, specs, monkeypatch)
    written = path.read_bytes()
    too_long = "X" * 41
    seen = editor(
        [("name: Acme Dental Reminders", f"name: {too_long}")],
        [(too_long, "Acme Recalls")],
    )
    result = run("edit", str(path))
    assert result.code == 0, result.err
    _first, second = seen()
    header = second["text"].splitlines()[:2]
    assert header[0].startswith("# reconciler edit: not saved")
    assert "spec.assistants.outbound.name: String should have at most 40 characters" in header[1]
    assert too_long in second["text"]  # the user's edit is still there to fix
    plain = sops.decrypt_bytes(path, path.read_bytes())
    assert b"Acme Recalls" in plain and b"reconciler edit" not in plain

    # giving up: saved unchanged after the problem was shown
    path.write_bytes(written)
    editor([("name: Acme Dental Reminders", f"name: {too_long}")], [])
    one_line_error(run("edit", str(path)), "not valid", "outbound.name")
    assert path.read_bytes() == written


# -- sops from the spec's folder, whatever the working directory --------------------------------


def test_the_sops_binary_decrypts_with_the_spec_folders_config(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The working directory's .sops.yaml (indent 8 here, or a broken one) never applies."""
    specs = initialised(run, env)
    path = new_org(run, specs, monkeypatch)
    plain = sops.decrypt_bytes(path, path.read_bytes())
    assert b"\n    credentials:\n" in plain  # sops's default indent, not the cwd's 8
    Path(".sops.yaml").write_text("creation_rules: [[[\n")
    assert sops.decrypt_bytes(path, path.read_bytes()) == plain
    # the loader's fallback to the binary (here: a decryption order it leaves to sops) too
    monkeypatch.setenv("SOPS_DECRYPTION_ORDER", "pgp,age")
    native.reset_stats()
    assert loader.load_tree(specs).problems == []
    assert native.stats().get("fallback:SOPS_DECRYPTION_ORDER") == 1


def test_the_readme_encryption_command_works_from_the_repository_root(
    run: Any, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: `sops encrypt -i specs/<slug>.yaml` from the folder `reconciler init` set up,
    and `sops --config specs/<dir>/.sops.yaml encrypt -i ...` for a .sops.yaml kept there."""
    specs = initialised(run, env)
    plain = (
        "apiVersion: reconciler/v1\nkind: Organization\n"
        "metadata: {id: 3f1c2d8e-6b0a-4a53-9d2e-1b7c9a0e4f11, slug: hand, name: Hand}\n"
        f"spec:\n  credentials:\n    vapi: {{apiKey: {KEY}, webhookSecret: {SECRET}}}\n"
    )
    (specs / "hand.yaml").write_text(plain)
    subprocess.run(
        [sops.sops_binary(), "encrypt", "-i", "specs/hand.yaml"],
        cwd=env["repo"],
        check=True,
        capture_output=True,
    )
    nested = specs / "prod"
    nested.mkdir()
    recipient = yaml.safe_load((env["repo"] / ".sops.yaml").read_text())["creation_rules"][0]
    (nested / ".sops.yaml").write_text(sops_rules(recipient["age"]))  # as specs/examples has
    (nested / "hand.yaml").write_text(plain)
    (specs / "hand.yaml").rename(specs / "hand.yaml.bak")
    subprocess.run(
        [sops.sops_binary(), "--config", "specs/prod/.sops.yaml", "encrypt", "-i",
         "specs/prod/hand.yaml"],
        cwd=env["repo"], check=True, capture_output=True,
    )  # fmt: skip
    assert run("validate", str(nested)).code == 0
    (specs / "hand.yaml.bak").rename(specs / "hand.yaml")
    assert loader.validate_tree(specs / "hand.yaml").problems == []


def test_init_refusals_change_nothing(run: Any, env: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    before = snapshot(tmp_path)
    one_line_error(
        run("init", str(env["repo"]), "--key-file", str(blocker / "key.txt")), "not a folder"
    )
    one_line_error(run("init", str(blocker)), "not a folder")
    assert snapshot(tmp_path) == before
