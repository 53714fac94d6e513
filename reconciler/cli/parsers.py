"""Parser definitions of the commands whose code lives in modules of their own (`import`,
`init`, `edit`, `set`, `render`, `audit`, `verify`, `org new`), apart from that code.

`reconciler --help` builds the whole parser: what it needs must stay light (argparse and the
standard library's cheapest modules). Each command's module, with what it imports, is loaded
only when that command runs, through `command()`. The argument types and constants that both
a parser and its command need are here, and the command's module imports them from here.
"""

from __future__ import annotations

import argparse
import re

TYPE_CHECKING = False  # as typing's, which --help need not import (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    _Sub = argparse._SubParsersAction[argparse.ArgumentParser]


class command:
    """A command's function, imported from its module when it is called (not when the parser
    is built). `resolve()` gives the function itself."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def resolve(self) -> Callable[[argparse.Namespace], int]:
        import importlib

        func: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(self.module), self.name
        )
        return func

    def __call__(self, args: argparse.Namespace) -> int:
        return self.resolve()(args)

    def __repr__(self) -> str:
        return f"command({self.module!r}, {self.name!r})"


# -- argument types and constants shared with the commands' modules ----------------------------

AUDIT_MAX_LIMIT = 100_000
_AUDIT_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_AUDIT_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def since(text: str, *, now: datetime | None = None) -> datetime:
    """`audit --since`: a duration back from now (`90s`, `30m`, `1h`, `7d`, `2w`) or an ISO 8601
    date or time (`2024-05-01`, `2024-05-01T12:00:00+02:00`; without an offset, UTC)."""
    from datetime import UTC, datetime, timedelta

    match = _AUDIT_DURATION.match(text)
    if match is not None:
        seconds = float(match.group(1)) * _AUDIT_UNIT_S[match.group(2)]
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{text!r} is too long ago") from None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is neither a duration (1h, 7d, 30m, 90s, 2w) nor an ISO 8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def audit_limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= AUDIT_MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text[:20]!r} is not a whole number 1..{AUDIT_MAX_LIMIT}"
        )
    return int(text)


_PROVIDER_ALIASES = {"googleCalendar": "google_calendar", "google-calendar": "google_calendar"}


def provider_name(text: str) -> str:
    """`verify --provider`: a provider's name (the spec's YAML keys too, `googleCalendar`)."""
    from reconciler.providers.verify import PROVIDERS

    name = _PROVIDER_ALIASES.get(text, text)
    if name not in PROVIDERS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a provider (one of {', '.join(PROVIDERS)})"
        )
    return name


# org new: (provider key, field, flag stem, what it is)
ORG_NEW_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("vapi", "apiKey", "vapi-key", "the Vapi private API key"),
    ("vapi", "webhookSecret", "webhook-secret", "the webhook secret"),
    ("twilio", "accountSid", "twilio-sid", "the Twilio account SID"),
    ("twilio", "authToken", "twilio-token", "the Twilio auth token"),
    ("googleCalendar", "clientId", "google-client-id", "the Google OAuth client id"),
    ("googleCalendar", "clientSecret", "google-client-secret", "the Google OAuth client secret"),
    ("googleCalendar", "refreshToken", "google-refresh-token", "the Google refresh token"),
    ("resend", "apiKey", "resend-key", "the Resend API key"),
    ("elevenlabs", "apiKey", "elevenlabs-key", "the ElevenLabs API key"),
)
ORG_NEW_OPTIONAL_PROVIDERS = ("twilio", "googleCalendar", "resend", "elevenlabs")
ORG_NEW_PROVIDER_FLAGS = {
    "twilio": "twilio",
    "googleCalendar": "google-calendar",
    "resend": "resend",
    "elevenlabs": "elevenlabs",
}


def org_new_dest(provider: str, name: str) -> str:
    return f"env_{provider}_{name}"


# -- the parsers ---------------------------------------------------------------------------------


def add_import(sub: _Sub) -> None:
    p = sub.add_parser(
        "import",
        help="write a spec (SOPS-encrypted) from an existing Vapi account",
        description="Read an existing Vapi account and write DIR/SLUG.yaml for it, with "
        "`spec.adopt: byName` so that the next apply adopts its assistants instead of "
        "creating new ones. The file is encrypted in place by sops (the nearest .sops.yaml).",
    )
    p.add_argument(
        "--vapi-key-env",
        required=True,
        metavar="VAR",
        help="environment variable holding the account's Vapi private API key",
    )
    p.add_argument("--slug", required=True, help="the org's slug: the file is DIR/SLUG.yaml")
    p.add_argument("--name", help="the org's display name (default: the slug, title-cased)")
    p.add_argument(
        "--out", default="specs", metavar="DIR", help="folder to write to (default specs)"
    )
    p.add_argument("--inbound", metavar="ID", help="the assistant to import as inbound")
    p.add_argument("--outbound", metavar="ID", help="the assistant to import as outbound")
    p.add_argument(
        "--webhook-secret-env",
        metavar="VAR",
        help="environment variable holding the org's webhook secret (default: the assistants' "
        "x-vapi-secret header, else a new one)",
    )
    p.add_argument("--org-id", metavar="UUID", help="the org's id (default: a new one)")
    p.add_argument("--force", action="store_true", help="overwrite an existing DIR/SLUG.yaml")
    p.set_defaults(func=command("reconciler.cli.importer", "cmd_import"))


def add_init(sub: _Sub) -> None:
    p = sub.add_parser(
        "init",
        help="set up a folder for specs: specs/, an age key, .sops.yaml, .gitignore",
        description="Make DIR/specs, an age identity where sops and reconciler find it with no "
        "setting ($SOPS_AGE_KEY_FILE, else sops's keys.txt in your config directory; appended "
        "to, mode 0600), DIR/.sops.yaml encrypting the credentials of specs/**.yaml to it, and "
        ".gitignore lines for age keys. Running it again changes nothing.",
    )
    p.add_argument("dir", nargs="?", default=".", help="the folder to set up (default .)")
    p.add_argument(
        "--key-file",
        metavar="PATH",
        help="keep the age identity in PATH instead (allowed inside a git work tree only when "
        "named here; it is then added to DIR/.gitignore when under DIR); other commands need "
        "SOPS_AGE_KEY_FILE=PATH",
    )
    p.set_defaults(func=command("reconciler.cli.init", "cmd_init"))


def add_edit(sub: _Sub) -> None:
    p = sub.add_parser(
        "edit",
        help="edit an encrypted spec in $EDITOR: checked on save, re-encrypted in place",
        description="Open the decrypted spec FILE in $EDITOR from a private temporary folder "
        "(removed on every exit, Ctrl-C included). On save it is checked as `validate` "
        "checks it (the editor opens again with the problems on top if it is not valid), "
        "then re-encrypted in place with the .sops.yaml nearest to it. Unchanged content "
        "leaves the file untouched; an editor that exits non-zero changes nothing.",
    )
    p.add_argument("file", help="the spec file")
    p.set_defaults(func=command("reconciler.cli.edit", "cmd_edit"))


def add_render(sub: _Sub) -> None:
    p = sub.add_parser(
        "render",
        help="print an org's effective assistants (templates rendered), offline",
        description="An org's assistants as the reconciler will send them, templates rendered "
        "and overrides merged. Offline: no key, database or network. Secret-looking values are "
        "masked. With --template NAME@VERSION --all: every org that uses NAME at another "
        "version, moved to VERSION, as a diff.",
    )
    p.add_argument("path", nargs="?", default="specs", help="spec file or folder (default specs)")
    p.add_argument("--org", metavar="SLUG", help="the org to render")
    p.add_argument("--assistant", metavar="ROLE", help="one assistant (default: all of them)")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml")
    p.add_argument(
        "--show-origin",
        action="store_true",
        help="mark each value: the template (version, parameters), an override or the org file",
    )
    p.add_argument(
        "--template",
        metavar="NAME@VERSION",
        help="with --all: preview every org that uses NAME moved to VERSION",
    )
    p.add_argument("--all", action="store_true", help="with --template: every org that uses it")
    p.set_defaults(func=command("reconciler.cli.effective", "cmd_render"))


def add_set(sub: _Sub) -> None:
    p = sub.add_parser(
        "set",
        help="change one value of an encrypted spec (e.g. rotate a credential), for scripts",
        description="Set the value at PATH (e.g. spec.credentials.vapi.webhookSecret; list "
        "items as [N]) in the encrypted spec FILE, from an environment variable or stdin, "
        "never printed; checked as `validate` checks it and re-encrypted in place.",
    )
    p.add_argument("file", help="the spec file")
    p.add_argument("path", metavar="PATH", help="the field, e.g. spec.credentials.vapi.apiKey")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-env", metavar="VAR", help="the value is in this variable")
    source.add_argument(
        "--stdin",
        action="store_true",
        help="read the value from stdin (one trailing newline dropped; at a terminal, a prompt "
        "that does not echo)",
    )
    p.add_argument("--json", action="store_true", help="the value is JSON (a number, a list...)")
    p.set_defaults(func=command("reconciler.cli.setvalue", "cmd_set"))


def add_audit(sub: _Sub) -> None:
    p = sub.add_parser(
        "audit",
        help="credential reads by the platform's services (reconciler.credentials), newest first",
        description="Print the credential audit: one line per read of an org's credential "
        "through reconciler.credentials (time, org, provider, caller, outcome), newest first. "
        "Never a value.",
    )
    p.add_argument("--org", metavar="SLUG", help="only this org's reads")
    p.add_argument(
        "--since",
        type=since,
        metavar="WHEN",
        help="only reads since then: a duration back from now (1h, 7d) or an ISO 8601 time",
    )
    p.add_argument(
        "--limit", type=audit_limit, default=100, metavar="N", help="at most N lines (default 100)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=command("reconciler.cli.audit", "cmd_audit"))


def add_verify(sub: _Sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check each stored credential against its provider and record the answer",
        description="Check each org's stored credentials (the active ones, in Postgres) with "
        "one read-only call per provider (Vapi, Twilio, Resend, ElevenLabs, Google Calendar), "
        "record last_verified_at or verification_error per (org, provider), and exit 1 if "
        "any failed.",
    )
    p.add_argument("--org", action="append", metavar="SLUG", help="only this org (repeatable)")
    p.add_argument(
        "--provider",
        action="append",
        type=provider_name,
        metavar="NAME",
        help="only this provider: vapi, twilio, google_calendar, resend, elevenlabs (repeatable)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=command("reconciler.cli.verify", "cmd_verify"))


def add_org_new(orgsub: _Sub) -> None:
    p = orgsub.add_parser(
        "new",
        help="write DIR/SLUG.yaml: a new org with both assistants from a template and its "
        "credentials encrypted at once",
        description="Write DIR/SLUG.yaml for a new org: a fresh uuid, an inbound and an "
        "outbound assistant from a starting template, and credentials read from environment "
        "variables or typed at a hidden prompt, encrypted by sops with the .sops.yaml nearest "
        "to the file before anything is written. The webhook secret is generated unless given. "
        "Another provider is added with its flag (--twilio, ...) or any of its --*-env flags.",
    )
    p.add_argument("slug", help="the org's slug: the file is DIR/SLUG.yaml")
    p.add_argument("--name", help="the org's display name (default: the slug, title-cased)")
    p.add_argument(
        "--path", default="specs", metavar="DIR", help="folder to write to (default specs)"
    )
    p.add_argument(
        "--server-url",
        metavar="URL",
        help="the assistants' server.url, where Vapi sends their webhooks (e.g. "
        "https://HOST/webhooks/vapi of `reconciler serve`); it then carries the webhook secret",
    )
    p.add_argument("--org-id", metavar="UUID", help="the org's id (default: a new one)")
    for provider, flag in ORG_NEW_PROVIDER_FLAGS.items():
        p.add_argument(
            f"--{flag}",
            dest=f"with_{provider}",
            action="store_true",
            help=f"add {provider} credentials (each from its --*-env flag, else a prompt)",
        )
    for provider, name, stem, what in ORG_NEW_FIELDS:
        p.add_argument(
            f"--{stem}-env",
            metavar="VAR",
            dest=org_new_dest(provider, name),
            help=f"environment variable holding {what}"
            + (" (default: generated)" if name == "webhookSecret" else ""),
        )
    p.set_defaults(func=command("reconciler.cli.orgnew", "cmd_org_new"))
