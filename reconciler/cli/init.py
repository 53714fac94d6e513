"""`reconciler init [DIR]`: a folder ready for specs, in one idempotent step.

It makes `DIR/specs/`, an age identity where sops and every `reconciler` command find it with
no setting (`$SOPS_AGE_KEY_FILE` when set, else sops's default `keys.txt` in the user's config
directory: appended to, never overwritten; mode 0600 in a 0700 folder), `DIR/.sops.yaml`
encrypting the `credentials` of `specs/**.yaml` to that identity's recipient, and `.gitignore`
lines that keep age keys out of git. A key file inside a git work tree is refused unless
`--key-file` names it. Run again, it changes nothing and says so.

Its parser is in `parsers.py`: this module is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError

SPECS = "specs"
SOPS_CONFIG = ".sops.yaml"
PATH_REGEX = r"^specs/.*\.ya?ml$"
GITIGNORE_HEADER = "# reconciler init: age private keys never go in git"
GITIGNORE_LINES = ("keys.txt", "*.agekey", ".reconciler-*")
_IDENTITY = re.compile(r"^AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}$", re.MULTILINE)


class InitRefused(ReconcilerError):
    """`init` cannot do what it was asked; nothing was changed."""


@dataclass
class _Plan:
    """What `init` will do; computed and checked before anything is changed."""

    root: Path
    key_file: Path
    key_shown: str
    found_by_sops: bool
    new_identity: Any = None  # pyrage identity to append, or None when one is already held
    recipient: str = ""
    make_dirs: list[Path] = field(default_factory=list)
    gitignore_add: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def cmd_init(args: argparse.Namespace) -> int:
    plan = _plan(args)
    try:
        return _carry_out(plan)
    except OSError as exc:
        from reconciler.redact import printable

        where = printable(exc.filename) if exc.filename else "a file"
        raise InitRefused(f"cannot write {where}: {exc.strerror or type(exc).__name__}") from None


def _carry_out(plan: _Plan) -> int:
    from reconciler.redact import printable

    done: list[str] = []
    if plan.new_identity is not None:  # first: the key is what a .sops.yaml must never lack
        count = _append_identity(plan.key_file, plan.new_identity, plan.root)
        done.append(
            f"added a new age identity to {plan.key_shown} (mode 0600; "
            f"{count} identit{'y' if count == 1 else 'ies'} in it now)"
        )
    for folder in plan.make_dirs:
        folder.mkdir(exist_ok=True)
        done.append(f"created {printable(folder)}/")
    if plan.new_identity is not None:
        _write_sops_config(plan.root / SOPS_CONFIG, plan.recipient)
        done.append(f"wrote {printable(plan.root / SOPS_CONFIG)} (recipient {plan.recipient})")
    elif _tighten(plan.key_file):
        done.append(f"set the mode of {plan.key_shown} to 0600")
    if plan.gitignore_add:
        _append_gitignore(plan.root / ".gitignore", plan.gitignore_add)
        done.append(
            f"added {', '.join(plan.gitignore_add)} to {printable(plan.root / '.gitignore')}"
        )
    for note in plan.notes:
        print(note, file=sys.stderr)
    if done:
        for line in done:
            print(line)
    else:
        print(
            f"{printable(plan.root)} is already set up: nothing changed (recipient "
            f"{plan.recipient}, identity in {plan.key_shown})"
        )
    specs = printable(plan.root / SPECS)
    print("next:")
    if not plan.found_by_sops:
        print(f"  export SOPS_AGE_KEY_FILE={printable(plan.key_file)}")
    print(f"  reconciler org new SLUG --path {specs} --vapi-key-env VAPI_API_KEY")
    print(f"  reconciler validate {specs}")
    print(f"  reconciler plan {specs}")
    return 0


def _plan(args: argparse.Namespace) -> _Plan:
    from reconciler.redact import printable

    root = Path(args.dir)
    if root.exists() and not root.is_dir():
        raise InitRefused(f"{printable(root)}: not a folder")
    key_file, found_by_sops, explicit = _key_location(args.key_file)
    shown = printable(key_file)
    real_key = _physical(key_file)
    tree = git_work_tree(real_key)
    if tree is not None and not explicit:
        raise InitRefused(
            f"the age key would go to {shown}, inside the git work tree {printable(tree)}: "
            "give --key-file PATH outside any work tree (or name this path with --key-file to "
            "keep it there on purpose)"
        )
    if key_file.exists() and not key_file.is_file():
        raise InitRefused(f"{shown}: not a regular file")
    blocking = next((p for p in key_file.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise InitRefused(f"{shown}: {printable(blocking)} is not a folder")
    plan = _Plan(root, real_key, shown, found_by_sops)
    plan.make_dirs = [p for p in (root, root / SPECS) if not p.is_dir()]

    config = root / SOPS_CONFIG
    held = _held_recipients(real_key)
    if config.exists():
        recipients, warning = sops_config_recipients(config)
        mine = [r for r in recipients if r in held]
        if not mine:
            raise InitRefused(
                f"{printable(config)} encrypts to {', '.join(recipients)} and no identity for "
                f"it is in {shown} or $SOPS_AGE_KEY: get that key from whoever holds it, or "
                "give --key-file PATH of a file that has it (nothing changed)"
            )
        plan.recipient = mine[0]
        if warning:
            plan.notes.append(f"warning: {printable(config)}: {warning}")
    else:
        import pyrage

        plan.new_identity = pyrage.x25519.Identity.generate()
        plan.recipient = str(plan.new_identity.to_public())

    wanted = list(GITIGNORE_LINES)
    root_real = _physical(root)
    if real_key.is_relative_to(root_real):
        wanted.append("/" + real_key.relative_to(root_real).as_posix())
    elif tree is not None:
        plan.notes.append(
            f"warning: {shown} is inside the git work tree {printable(tree)}: make sure "
            "that work tree ignores it"
        )
    plan.gitignore_add = [line for line in wanted if line not in _gitignore_lines(root)]
    return plan


def _key_location(given: str | None) -> tuple[Path, bool, bool]:
    """(the key file, whether sops finds it with no setting, whether --key-file named it)."""
    from reconciler.secrets.native import default_keys_path

    env_file = os.environ.get("SOPS_AGE_KEY_FILE")
    default = default_keys_path(os.environ)
    if given is not None:
        path = Path(given).expanduser().absolute()
        found = any(p and _physical(Path(p)) == _physical(path) for p in (env_file, default))
        return path, found, True
    if env_file:
        return Path(env_file).expanduser().absolute(), True, False
    if default is None:
        raise InitRefused(
            "neither XDG_CONFIG_HOME (absolute) nor HOME is set, so sops has no default key "
            "file: give --key-file PATH"
        )
    return Path(default), True, False


def _physical(path: Path) -> Path:
    """`path` with the symlinks of its existing part resolved (it may not exist yet)."""
    return Path(os.path.realpath(path.absolute()))


def git_work_tree(path: Path) -> Path | None:
    """The git work tree `path` is in (a folder above it holding `.git`), or None."""
    for folder in path.parents:
        if (folder / ".git").exists():
            return folder
    return None


def _held_recipients(key_file: Path) -> set[str]:
    """The recipients of every age identity sops would find: in `key_file`, $SOPS_AGE_KEY,
    $SOPS_AGE_KEY_FILE and the default keys.txt."""
    import pyrage

    from reconciler.secrets.native import default_keys_path

    texts = [os.environ.get("SOPS_AGE_KEY", "")]
    for candidate in (
        str(key_file),
        os.environ.get("SOPS_AGE_KEY_FILE"),
        default_keys_path(os.environ),
    ):
        if candidate:
            try:
                texts.append(Path(candidate).read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue
    held: set[str] = set()
    for text in texts:
        for line in _IDENTITY.findall(text.replace("\r", "")):
            try:
                held.add(str(pyrage.x25519.Identity.from_str(line).to_public()))
            except Exception:  # noqa: S112 - not a key sops could use either
                continue
    return held


def sops_config_recipients(config: Path) -> tuple[list[str], str | None]:
    """The age recipients of the first creation rule of `config` that matches
    `specs/<slug>.yaml` (as sops picks one), and a warning when that rule does not encrypt
    exactly `credentials`. Refused when there is no such rule."""
    import yaml

    from reconciler.redact import printable

    shown = printable(config)
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise InitRefused(f"{shown}: cannot read it as YAML (nothing changed)") from None
    rules = data.get("creation_rules") if isinstance(data, dict) else None
    for rule in rules if isinstance(rules, list) else []:
        if not isinstance(rule, dict):
            continue
        pattern = rule.get("path_regex")
        try:
            if pattern is not None and not re.search(str(pattern), "specs/example.yaml"):
                continue
        except re.error:
            continue
        age = rule.get("age")
        recipients = (
            [str(a).strip() for a in age]
            if isinstance(age, list)
            else [a.strip() for a in str(age or "").split(",")]
        )
        recipients = [r for r in recipients if r]
        if not recipients:
            break
        warning = None
        if rule.get("encrypted_regex") != "^credentials$":
            warning = (
                "its rule for specs/ does not have `encrypted_regex: ^credentials$`: sops "
                "would encrypt more than the credentials, which the reconciler refuses"
            )
        return recipients, warning
    raise InitRefused(
        f"{shown} has no creation rule with an age recipient for specs/*.yaml: fix it, or "
        "move it away and run init again (nothing changed)"
    )


def _make_private_dirs(folder: Path) -> None:
    """Creates `folder` and its missing parents, each mode 0700."""
    missing = []
    for p in (folder, *folder.parents):
        if p.is_dir():
            break
        missing.append(p)
    for p in reversed(missing):
        p.mkdir(mode=0o700)
        os.chmod(p, 0o700)


def _append_identity(key_file: Path, identity: Any, root: Path) -> int:
    """Appends `identity` (age-keygen's format, with comments) to `key_file`, created 0600
    when missing and set to 0600 when it was looser; the number of identities now in it."""
    _make_private_dirs(key_file.parent)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    block = (
        f"# created: {now} by reconciler init for {_physical(root)}\n"
        f"# public key: {identity.to_public()}\n"
        f"{identity}\n"
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(key_file, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        size = os.fstat(fd).st_size
        if size:
            with open(key_file, "rb") as existing:
                existing.seek(size - 1)
                if existing.read(1) != b"\n":
                    block = "\n" + block
        os.write(fd, block.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(_IDENTITY.findall(key_file.read_text(encoding="utf-8", errors="replace")))


def _tighten(key_file: Path) -> bool:
    """Sets an existing key file to 0600 when group or others could read it."""
    try:
        mode = key_file.stat().st_mode & 0o777
    except OSError:
        return False
    if mode & 0o077:
        os.chmod(key_file, 0o600)
        return True
    return False


def _write_sops_config(path: Path, recipient: str) -> None:
    text = (
        "# Written by `reconciler init`. Only the `credentials` of each spec are encrypted, and "
        "the MAC\n"
        "# covers only encrypted values, so assistants stay readable in review. sops looks for "
        "this file\n"
        "# from its working directory upwards; reconciler's commands from the spec file's "
        "folder.\n"
        "creation_rules:\n"
        f"  - path_regex: {PATH_REGEX}\n"
        "    encrypted_regex: ^credentials$\n"
        "    mac_only_encrypted: true\n"
        f"    age: {recipient}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _gitignore_lines(root: Path) -> set[str]:
    try:
        text = (root / ".gitignore").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return {line.strip() for line in text.splitlines()}


def _append_gitignore(path: Path, lines: list[str]) -> None:
    try:
        existing = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        existing = ""
    prefix = "" if not existing or existing.endswith("\n") else "\n"
    header = "" if GITIGNORE_HEADER in existing else f"{GITIGNORE_HEADER}\n"
    with open(path, "a", encoding="utf-8") as out:
        out.write(prefix + header + "".join(f"{line}\n" for line in lines))
