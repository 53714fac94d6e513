"""`reconciler` command line. Every expected failure is one line on stderr and a non-zero exit.

Only argparse and our own light modules are imported here; each command imports what it needs,
so `--help`, `validate` and `schema` answer without loading the database, HTTP or terminal
libraries. The commands with a module of their own have their parsers in `parsers.py`, and
their module is imported only when they run (`parsers.command`); even `logging` waits until
the arguments are parsed (`--help` and `--version` exit before).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler import __version__
from reconciler.cli import parsers
from reconciler.heap import settled

TYPE_CHECKING = False  # as typing's, which --help need not import (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

    from rich.console import Console

    from reconciler.cli.progress import OrgProgress
    from reconciler.controller.run import Options, RunReport
    from reconciler.secrets.crypto import KeyRing
    from reconciler.server.runtime import Reading
    from reconciler.spec.loader import LoadResult
    from reconciler.state.keys import Unopened
    from reconciler.state.store import StateWriter

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
SCHEMA_PATH = Path("schemas/org.schema.json")


def _out() -> Console:
    from reconciler.cli import console

    return console.make()


def cmd_validate(args: argparse.Namespace) -> int:
    from reconciler.redact import printable
    from reconciler.spec import loader

    result = loader.validate_tree(Path(args.path))
    lock = result.templates.lock
    new = sorted(set(lock.digests) - set(result.templates.recorded.digests))
    if new and result.lock_path is not None:
        shown = result.lock_path
        if args.locked:
            for ref in new:
                result.problems.append(
                    loader.Problem(
                        shown,
                        f"templates.{ref}",
                        "not recorded: run `reconciler validate` and commit the lock",
                    )
                )
        elif not result.problems:
            loader.write_lock(result.lock_path, lock)
            print(f"{printable(shown)}: recorded {', '.join(new)}")
    for problem in result.problems:
        print(problem)
    if result.problems:
        print(
            f"{len(result.bad_paths)} file(s) failed ({len(result.problems)} problem(s))",
            file=sys.stderr,
        )
        return EXIT_ERROR
    print(f"{len(result.specs)} spec(s) valid")
    return EXIT_OK


def _load(args: argparse.Namespace) -> LoadResult:
    from reconciler.spec import loader

    return loader.slugs_filter(loader.load_tree(Path(args.path)), args.org or [])


def _options(args: argparse.Namespace) -> Options:
    """The run's options from the flags. Orgs in Postgres without a spec are orphans only when
    the whole spec folder is read (not one file, not `--org`)."""
    from reconciler.controller.run import Options
    from reconciler.engine.runplan import MAX_DELETES

    return Options(
        prune=args.prune,
        orphans=Path(args.path).is_dir() and not args.org,
        max_deletes=getattr(args, "max_deletes", MAX_DELETES),
        adopt_by_name=args.adopt_by_name,
        accept_account_change=frozenset(args.accept_account_change or ()),
        max_template_orgs=args.max_template_orgs,
        accept_rollouts=frozenset(args.accept_template_rollout or ()),
    )


def _offline_diff(args: argparse.Namespace) -> RunReport:
    """`diff --base REF`: no key, no database, no network."""
    import tempfile

    from reconciler.controller.offline import offline_diff
    from reconciler.spec import loader
    from reconciler.spec.git import tree_at

    path = Path(args.path)
    with tempfile.TemporaryDirectory(prefix="reconciler-diff-") as tmp:
        base_root = tree_at(path, args.base, Path(tmp))
        if base_root.exists() and any(base_root.rglob("*.y*ml")):
            base_loaded, base_docs = loader.validate_with_documents(base_root)
        else:  # the specs did not exist at REF: every org is new
            base_loaded, base_docs = loader.LoadResult([], []), {}
        head_loaded, head_docs = loader.validate_with_documents(path)
    base_loaded = loader.slugs_filter(base_loaded, args.org or [])
    head_loaded = loader.slugs_filter(head_loaded, args.org or [])
    base_loaded.problems = []  # the base's own problems are not this change's
    options = _options(args)
    return offline_diff(
        (base_loaded, base_docs),
        (head_loaded, head_docs),
        prune=options.prune,
        orphans=options.orphans,
        adopt_by_name=options.adopt_by_name,
    )


def cmd_plan(args: argparse.Namespace) -> int:
    out = getattr(args, "out", None)
    if getattr(args, "base", None) and out:
        print("error: --out saves a plan to apply; diff --base makes none", file=sys.stderr)
        return EXIT_ERROR
    with settled() as settle:
        report = _offline_diff(args) if getattr(args, "base", None) else _plan(args, settle)
        return _print_plan(args, report)


def _plan(args: argparse.Namespace, settle: Callable[[], None]) -> RunReport:
    from reconciler.config import load_settings
    from reconciler.server.runtime import runtime

    settings = load_settings()
    loaded = _load(args)
    settle()
    options = _options(args)
    with (
        runtime(settings, write=False) as rt,
        _progress(args, applied=False) as progress,
    ):
        report = rt.controller.plan(loaded, options=options, progress=progress)
    out = getattr(args, "out", None)
    if out:
        from reconciler.cli import saved

        held = saved.write(Path(out), report, options, Path(args.path), args.org or [])
        print(
            f"saved the plan of {held} org(s) to {out}: `reconciler apply {out}`",
            file=sys.stderr,
        )
    return report


def _print_plan(args: argparse.Namespace, report: RunReport) -> int:
    import json

    from reconciler.cli.render import render_text, report_json

    if args.format == "json":
        print(json.dumps(report_json(report), indent=2, default=str))
    elif args.format == "markdown":
        from reconciler.cli.markdown import render_markdown

        print(render_markdown(report), end="")
    else:
        render_text(report, _out(), quiet=args.quiet)
    if not report.ok:
        return EXIT_ERROR
    return EXIT_CHANGES if report.has_changes and args.detailed_exitcode else EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from reconciler.cli import saved
    from reconciler.cli.render import render_text
    from reconciler.config import load_settings
    from reconciler.server.runtime import runtime

    settings = load_settings()
    plan_file = Path(args.path)
    if saved.is_saved_plan(plan_file):
        return _apply_saved(args, plan_file)
    from reconciler.spec.git import worktree_revision

    with settled() as settle:
        loaded = _load(args)
        settle()
        revision = worktree_revision(Path(args.path))  # as `serve --git-url` records its commit
        with (
            runtime(settings, write=True, lock_wait_s=args.lock_timeout) as rt,
            _progress(args, applied=True) as progress,
        ):
            report = rt.controller.apply(
                loaded, options=_options(args), revision=revision, progress=progress
            )
        render_text(report, _out(), verb="Applied", quiet=args.quiet)
    return EXIT_OK if report.ok else EXIT_ERROR


def _progress(args: argparse.Namespace, *, applied: bool) -> OrgProgress:
    """Each org's result as soon as it is known, and a live line on a terminal
    (`cli.progress`)."""
    from reconciler.cli.progress import for_output

    fmt = getattr(args, "format", "text")
    return for_output(_out(), fmt=fmt, quiet=args.quiet, applied=applied)


def _apply_saved(args: argparse.Namespace, plan_file: Path) -> int:
    """`apply FILE`: the saved plan's orgs, with the options it was made with, each only if
    what it was computed from still holds."""
    from reconciler.cli import saved
    from reconciler.cli.render import render_text
    from reconciler.config import load_settings
    from reconciler.server.runtime import runtime
    from reconciler.spec import loader
    from reconciler.spec.git import worktree_revision

    flags = [
        f
        for f, on in (
            ("--org", args.org),
            ("--prune", args.prune),
            ("--adopt-by-name", args.adopt_by_name),
            ("--accept-account-change", args.accept_account_change),
        )
        if on
    ]
    if flags:
        print(
            f"error: {', '.join(flags)}: apply FILE runs the saved plan with the options it "
            "was made with; give them to `plan --out`",
            file=sys.stderr,
        )
        return EXIT_ERROR
    plan = saved.read(plan_file)
    with settled() as settle:
        loaded = loader.slugs_filter(loader.load_tree(plan.specs), list(plan.orgs))
        settle()
        with (
            runtime(load_settings(), write=True, lock_wait_s=args.lock_timeout) as rt,
            _progress(args, applied=True) as progress,
        ):
            report = rt.controller.apply(
                loaded,
                options=plan.options,
                saved=plan.stamps,
                revision=worktree_revision(plan.specs),
                progress=progress,
            )
        render_text(report, _out(), verb="Applied", quiet=args.quiet)
    return EXIT_OK if report.ok else EXIT_ERROR


def cmd_org_retire(args: argparse.Namespace) -> int:
    """Retires one org by slug, as `apply --prune` does when its spec is gone. Refused while a
    spec for that org is still in the folder: the next apply would bring it back. With
    `--dry-run`, shows what it would do and changes nothing; otherwise it asks on a terminal,
    and without one it needs `--yes`."""
    from reconciler.cli.render import render_text
    from reconciler.config import load_settings
    from reconciler.redact import printable
    from reconciler.server.runtime import runtime

    if not args.dry_run and not args.yes and not _interactive():
        print(
            f"error: org retire {printable(args.slug, 80)} deletes its assistants, numbers and "
            "tools and is not undone: pass --yes to run it without a terminal (or --dry-run to "
            "see what it does)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    settings = load_settings()
    if args.dry_run:  # reads only: a PlanController over a StateReader
        with runtime(settings, write=False) as reading:
            refused = _retire_refused(reading, args)
            if refused is not None:
                return refused
            planned = reading.controller.plan_retire(args.slug, max_deletes=args.max_deletes)
        render_text(planned, _out())
        print("dry run: nothing was changed", file=sys.stderr)
        return EXIT_OK if planned.ok else EXIT_ERROR
    with runtime(settings, write=True) as rt:
        refused = _retire_refused(rt, args)
        if refused is not None:
            return refused
        if not args.yes:
            planned = rt.controller.plan_retire(args.slug, max_deletes=args.max_deletes)
            question = f"retire org {printable(args.slug, 80)} (deletes {_deleted(planned)})?"
            if not planned.ok:
                render_text(planned, _out())
                question = f"{question} (its plan has errors, above)"
            if not _confirm(question):
                print("not retired: nothing was changed", file=sys.stderr)
                return EXIT_ERROR
        report = rt.controller.retire(args.slug, max_deletes=args.max_deletes)
    render_text(report, _out(), verb="Retired")
    return EXIT_OK if report.ok else EXIT_ERROR


def _retire_refused(rt: Reading, args: argparse.Namespace) -> int | None:
    """Why `org retire` may not run (no such org; its spec still in the folder), said."""
    from reconciler.spec import loader

    org_id = rt.state.orgs.live_id(args.slug)
    if org_id is None:
        print(f"error: no live org has the slug {args.slug}", file=sys.stderr)
        return EXIT_ERROR
    path = Path(args.path)
    if path.exists():
        specs = loader.validate_tree(path).specs
        if any(str(spec.org.metadata.id) == org_id for spec in specs):
            print(
                f"error: {args.slug}: its spec is still in {path}; remove it first, or "
                "the next apply brings the org back",
                file=sys.stderr,
            )
            return EXIT_ERROR
    return None


def _interactive() -> bool:
    """A person can answer: stdin and stderr (where the question goes) are terminals."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def _deleted(report: RunReport) -> str:
    """`2 assistants, 2 phone numbers and 3 tools`: what a plan deletes in Vapi, by kind."""
    from reconciler.engine.actions import DeleteAssistant, DeleteResource

    counts: dict[str, int] = {"assistant": 0}
    for outcome in report.outcomes:
        for action in outcome.plan.actions if outcome.plan is not None else ():
            if isinstance(action, DeleteAssistant | DeleteResource) and action.vapi_id:
                label = "phone number" if action.resource == "phoneNumber" else action.resource
                counts[label] = counts.get(label, 0) + 1
    parts = [
        f"{n} {label}{'' if n == 1 else 's'}"
        for label, n in counts.items()
        if n or label == "assistant"
    ]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _confirm(question: str) -> bool:
    """`question [y/N]` on stderr, the answer from stdin: only y or yes (any case) is yes."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def cmd_resolve(args: argparse.Namespace) -> int:
    from reconciler.config import load_settings
    from reconciler.redact import printable
    from reconciler.server.runtime import runtime

    with runtime(load_settings(), write=False) as rt:
        row = rt.state.assistants.owner(args.assistant_id)
    if row is None:
        shown = printable(args.assistant_id, 80)
        print(f"error: assistant {shown} belongs to no known org", file=sys.stderr)
        return EXIT_ERROR
    line = f"{row['org_id']} {printable(row['slug'])} ({row['role']})"
    if row["retired_at"] is not None:
        line += f" retired: the org was retired at {_utc(row['retired_at'])}"
    elif row["inactive_at"] is not None:
        line += f" inactive: the assistant was replaced or deleted at {_utc(row['inactive_at'])}"
    print(line)
    return EXIT_OK


def _utc(when: Any) -> str:
    """A timestamptz as `2026-12-06T19:40:00Z`."""
    from datetime import UTC

    return str(when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def cmd_serve(args: argparse.Namespace) -> int:
    from reconciler.config import load_settings
    from reconciler.server.serve import ServeOptions, serve

    options = ServeOptions(
        Path(args.path),
        interval_s=args.interval,
        listen=args.listen,
        git_url=args.git_url,
        git_ref=args.git_ref,
        prune=args.prune,
        max_deletes=args.max_deletes,
        log_format=args.log_format,
        max_template_orgs=args.max_template_orgs,
        accept_rollouts=frozenset(args.accept_template_rollout or ()),
    )
    return serve(load_settings(), options)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from reconciler.cli.render import render_status
    from reconciler.config import load_settings
    from reconciler.redact import printable
    from reconciler.server.runtime import runtime
    from reconciler.server.views import org_view

    with runtime(load_settings(), write=False) as rt:
        rows = rt.state.orgs.statuses(args.org)
        rollouts = [r.as_view() for r in rt.state.rollouts.all().values()]
    if args.org and not rows:
        print(f"error: no org with slug {args.org} in Postgres", file=sys.stderr)
        return EXIT_ERROR
    views = [org_view(r) for r in rows]
    if args.format == "json":
        print(json.dumps({"orgs": views, "rollouts": rollouts}, indent=2, default=str))
    else:
        render_status(views, _out(), detail=bool(args.org))
        for r in rollouts:
            print(printable(_rollout_text(r)))
    return EXIT_OK


def _rollout_text(r: dict[str, Any]) -> str:
    state = (
        "done"
        if r["done"]
        else f"HALTED since {r['haltedAt']}: {r['haltedReason']}"
        if r["halted"]
        else "under way"
    )
    done = f"{r['orgsDone']} org(s) on it"
    return f"rollout {r['template']}: wave {r['wave']} of {r['waves']}, {done}, {state}"


def cmd_rollout(args: argparse.Namespace) -> int:
    """`rollout resume NAME@VERSION`: a halted template rollout goes on with its next run."""
    from reconciler.config import load_settings
    from reconciler.redact import printable
    from reconciler.server.runtime import runtime

    with runtime(load_settings(), write=True) as rt:
        why = rt.state.rollouts.resume(args.template)
        rows = rt.state.rollouts.all()
    if why is not None:
        print(f"error: {printable(why)}", file=sys.stderr)
        return EXIT_ERROR
    print(printable(_rollout_text(rows[args.template].as_view()).replace("under way", "resumed")))
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    """`keys status`: the active key id, rows per key id, and every row that does not open
    (exit 1); `keys rotate`: make the first key active, then every row to it."""
    from reconciler.config import load_settings
    from reconciler.redact import printable
    from reconciler.server.runtime import runtime
    from reconciler.state.keys import key_status, rotate, unopened

    with runtime(load_settings(), write=True) as rt:
        state = rt.state
        if args.keys_command == "status":
            return _keys_status(state, rt.key, key_status(state), unopened(state, rt.key))

        def progress(done: Any) -> None:
            print(f"checked {done.checked} row(s), re-encrypted {done.rotated}", file=sys.stderr)

        done = rotate(state, rt.key, batch=args.batch, progress=progress)
    for line in done.refused:
        print(f"error: {printable(line)}", file=sys.stderr)
    if done.refused:
        print(f"nothing re-encrypted: master key {rt.key.active_id} was not made active")
        return EXIT_ERROR
    for line in done.failed:
        print(f"error: {line}", file=sys.stderr)
    print(
        f"re-encrypted {done.rotated} of {done.checked} row(s) to key {rt.key.active_id}"
        + (f"; {len(done.failed)} did not open" if done.failed else "")
    )
    return EXIT_ERROR if done.failed else EXIT_OK


def _keys_status(
    state: StateWriter, ring: KeyRing, counts: dict[str, int], bad: list[Unopened]
) -> int:
    """Exit 1 when a row does not open (each named: org, provider, key id) or this process's
    active key is not the one recorded (it would write no credential)."""
    from reconciler.errors import MasterKeyRefused
    from reconciler.redact import printable

    record = state.credentials.master_key()
    recorded = record["key_id"] if record else None
    if record is None:
        print("active key id: not recorded yet (the first credential write or `keys rotate`)")
    else:
        print(
            f"active key id: {recorded} (set by {printable(record['set_by'])}"
            f" at {record['set_at']:%Y-%m-%d %H:%M:%S %Z})"
        )
    if not counts:
        print("no stored credential yet")
    for kid, rows in counts.items():
        mark = "  (active)" if kid == (recorded or ring.active_id) else ""
        held = "" if kid in ring.ids else "  NOT in RECONCILER_MASTER_KEYS"
        print(f"{kid:<32} {rows:>8} row(s){mark}{held}")
    failed = False
    if recorded is not None and recorded != ring.active_id:
        refused = MasterKeyRefused.not_active(None, ring.active_id, recorded, ring.ids)
        print(f"error: {refused}", file=sys.stderr)
        failed = True
    elif record is not None and record["key_check"] not in (None, ring.check_value()):
        print(f"error: {MasterKeyRefused.wrong_key(None, ring.active_id)}", file=sys.stderr)
        failed = True
    for row in bad:
        print(f"error: {printable(row.line())}", file=sys.stderr)
    if bad:
        print(f"error: {len(bad)} row(s) do not open under RECONCILER_MASTER_KEYS", file=sys.stderr)
    return EXIT_ERROR if failed or bad else EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from reconciler.config import load_settings
    from reconciler.state.connect import database_url
    from reconciler.state.db import open_pool
    from reconciler.state.migrate import migrate

    pool = open_pool(database_url(load_settings()), max_size=2)
    try:
        applied = migrate(pool)
    finally:
        pool.close()
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return EXIT_OK


def cmd_emulator(args: argparse.Namespace) -> int:
    from reconciler.vapi.emulator import serve

    host, port = args.listen
    shown = f"[{host}]" if ":" in host else host
    print(f"Vapi emulator on http://{shown}:{port} (latency {args.latency_ms} ms)", file=sys.stderr)
    print(
        "provider stubs (Twilio, Resend, ElevenLabs, Google) under /_stubs/: "
        f"export RECONCILER_PROVIDER_STUBS=http://{shown}:{port} to reach no third party",
        file=sys.stderr,
    )
    serve(host, port, latency_ms=args.latency_ms, normalise=args.normalise)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from reconciler.spec.schema import schema_text

    text = schema_text()
    path = Path(args.output)
    if args.check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(f"{path} is stale: run `reconciler schema`", file=sys.stderr)
            return EXIT_ERROR
        print(f"{path} is up to date")
        return EXIT_OK
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from reconciler.cli.demo import run_demo

    return run_demo(Path(args.path), _out())


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """`--lock-timeout DURATION` as Terraform writes it: 500ms, 30s, 5m, 1h (bare: seconds)."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (e.g. 30s, 5m, 500ms, 0 to not wait)"
        )
    seconds = float(match.group(1)) * _UNIT_S[match.group(2) or "s"]
    if seconds > 24 * 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than a day")
    return seconds


def interval(text: str) -> float:
    """`serve --interval`: a duration of at least one second."""
    seconds = duration(text)
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than 1s")
    return seconds


def listen_address(text: str) -> tuple[str, int]:
    """`--listen HOST:PORT` (`:PORT` means 127.0.0.1, `[::1]:PORT` for IPv6)."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT with a port from 1 to 65535 (e.g. 127.0.0.1:8787)"
        )
    return host or "127.0.0.1", int(port_text)


def _path_arg(p: argparse.ArgumentParser, default: str = "specs") -> None:
    p.add_argument(
        "path", nargs="?", default=default, help=f"spec file or folder (default {default})"
    )


def _org_args(p: argparse.ArgumentParser) -> None:
    _path_arg(p)
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the summary and problems: no line per org, no progress line",
    )
    p.add_argument("--org", action="append", metavar="SLUG", help="only this org (repeatable)")
    p.add_argument(
        "--prune",
        action="store_true",
        help="delete assistants removed from the spec (and tagged duplicates), and retire "
        "orgs whose spec is gone",
    )
    p.add_argument(
        "--adopt-by-name",
        action="store_true",
        help="adopt (tag) an untagged assistant named like a desired one instead of creating "
        "one (as `spec.adopt: byName` does for one org)",
    )
    p.add_argument(
        "--accept-account-change",
        action="append",
        metavar="SLUG",
        help="this org's Vapi key may now reach another Vapi account than before (repeatable)",
    )
    _template_bound(p)


def _template_bound(p: argparse.ArgumentParser) -> None:
    from reconciler.engine.limits import MAX_TEMPLATE_ORGS

    p.add_argument(
        "--max-template-orgs",
        type=_count,
        default=MAX_TEMPLATE_ORGS,
        metavar="N",
        help="move no org to a template version that would move more than N orgs in one run "
        f"(default {MAX_TEMPLATE_ORGS})",
    )
    p.add_argument(
        "--accept-template-rollout",
        action="append",
        metavar="NAME@VERSION",
        help="move every org to this template version, past --max-template-orgs (repeatable)",
    )


def _max_deletes(
    p: argparse.ArgumentParser,
    text: str = "delete nothing when the run would delete more than N assistants (default 5)",
) -> None:
    from reconciler.engine.limits import MAX_DELETES

    p.add_argument("--max-deletes", type=_count, default=MAX_DELETES, metavar="N", help=text)


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 1")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler", description="GitOps reconciler for multi-tenant Vapi deployments."
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check spec files offline")
    _path_arg(p)
    p.add_argument(
        "--locked",
        action="store_true",
        help="write nothing: a template version missing from templates/templates.lock is a "
        "problem (for CI: the lock must be committed with the templates)",
    )
    p.set_defaults(func=cmd_validate)

    for name, helptext in (("plan", "show what apply would change"), ("diff", "alias of plan")):
        p = sub.add_parser(name, help=helptext)
        _org_args(p)
        p.add_argument("--format", choices=("text", "json", "markdown"), default="text")
        p.add_argument(
            "--detailed-exitcode", action="store_true", help="exit 2 when there are changes"
        )
        p.add_argument(
            "--out",
            metavar="FILE",
            help="also save the plan (no secret in it) for `reconciler apply FILE`, which runs "
            "exactly it and refuses an org whose spec or live state changed since",
        )
        if name == "diff":
            p.add_argument(
                "--base",
                metavar="REF",
                help="compare with the specs at this git revision, offline: no age key, "
                "no database, no network (for pull requests)",
            )
        p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "apply",
        help="converge Postgres and every org's Vapi account (or run a plan saved by "
        "`plan --out FILE`: `apply FILE`)",
    )
    _org_args(p)
    _max_deletes(p)
    p.add_argument(
        "--lock-timeout",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="wait this long (e.g. 30s) for an org held by another reconciler, "
        "instead of skipping it (default 0: skip)",
    )
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser(
        "serve", help="reconcile every interval and serve webhooks, status and metrics"
    )
    _path_arg(p)
    p.add_argument(
        "--interval",
        type=interval,
        default=60.0,
        metavar="DURATION",
        help="time between reconcile runs, with 10%% jitter (default 60s)",
    )
    p.add_argument(
        "--listen",
        type=listen_address,
        default="0.0.0.0:8080",
        metavar="HOST:PORT",
        help="HTTP address for webhooks, status API and metrics (default 0.0.0.0:8080)",
    )
    p.add_argument("--git-url", metavar="URL", help="fetch specs from this git repository")
    p.add_argument(
        "--git-ref", default="main", metavar="REF", help="branch, tag or commit (default main)"
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="delete assistants removed from the spec (and tagged duplicates), and retire "
        "orgs whose spec is gone from the folder",
    )
    _max_deletes(
        p,
        "delete nothing in a run that would delete more than N assistants, counted over every "
        "org and orphan of the run (default 5)",
    )
    _template_bound(p)
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("rollout", help="template rollouts in waves")
    rsub = p.add_subparsers(dest="rollout_command", required=True)
    r = rsub.add_parser(
        "resume",
        help="let a halted template rollout go on (its wave's orgs are judged again)",
    )
    r.add_argument("template", metavar="NAME@VERSION")
    r.set_defaults(func=cmd_rollout)

    p = sub.add_parser("org", help="one org's lifecycle")
    orgsub = p.add_subparsers(dest="org_command", required=True)
    r = orgsub.add_parser(
        "retire",
        help="delete an org's tagged assistants, deactivate its credentials and retire it "
        "(row and history kept, slug freed)",
    )
    r.add_argument("slug")
    r.add_argument(
        "--path", default="specs", help="the spec folder, checked not to hold its spec (specs)"
    )
    _max_deletes(r)
    r.add_argument("--dry-run", action="store_true", help="show what it would do; change nothing")
    r.add_argument(
        "--yes", action="store_true", help="do not ask (scripts: needed without a terminal)"
    )
    r.set_defaults(func=cmd_org_retire)
    parsers.add_org_new(orgsub)

    p = sub.add_parser("status", help="conditions, revisions and recent runs of each org")
    p.add_argument("--org", metavar="SLUG", help="only this org, in detail")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("resolve", help="which org owns a Vapi assistant id")
    p.add_argument("assistant_id")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("keys", help="master keys of the stored credentials")
    keysub = p.add_subparsers(dest="keys_command", required=True)
    k = keysub.add_parser("status", help="rows per master key id")
    k.set_defaults(func=cmd_keys)
    k = keysub.add_parser(
        "rotate",
        help="re-encrypt every row to the active key (the first of RECONCILER_MASTER_KEYS), "
        "in batches: online, idempotent, safe to interrupt and run again",
    )
    k.add_argument(
        "--batch", type=_positive, default=200, metavar="N", help="rows per transaction (200)"
    )
    k.set_defaults(func=cmd_keys)

    p = sub.add_parser("db", help="database maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    m = dbsub.add_parser("migrate", help="apply migrations")
    m.set_defaults(func=cmd_migrate)

    p = sub.add_parser("vapi-emulator", help="run the local Vapi emulator")
    p.add_argument(
        "--listen",
        type=listen_address,
        default="127.0.0.1:8787",
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:8787)",
    )
    p.add_argument("--latency-ms", type=int, default=0)
    p.add_argument(
        "--normalise",
        action="store_true",
        help="fill Vapi's server defaults and answer in Vapi's key order (catches a perpetual "
        "diff in your CI)",
    )
    p.set_defaults(func=cmd_emulator)

    p = sub.add_parser("schema", help="write the JSON schema of spec files")
    p.add_argument("--check", action="store_true", help="fail when the committed file is stale")
    p.add_argument("--output", default=str(SCHEMA_PATH))
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("demo", help="embedded Postgres + emulator: the whole flow on the examples")
    _path_arg(p, "specs/examples")
    p.set_defaults(func=cmd_demo)
    parsers.add_import(sub)
    parsers.add_init(sub)
    parsers.add_edit(sub)
    parsers.add_set(sub)
    parsers.add_render(sub)
    parsers.add_audit(sub)
    parsers.add_verify(sub)
    return parser


EXIT_CLOSED_PIPE = 141
"""What a shell reports for a program killed by SIGPIPE (`yes | head -1`): the reader of our
output went away before the end. SIGPIPE itself stays ignored (Python's default): dying in the
middle of a write could leave a Vapi create unrecorded, so the command finishes its work and
only its output stops."""


def _stdout_closed() -> bool:
    """stdout is a pipe whose reader is gone (`| head` exited)."""
    import select

    from reconciler.cli import console

    if console.STDOUT_CLOSED.is_set():
        return True
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no fd (a test's capture), no poll
        return True


def _closed_pipe() -> int:
    """`reconciler plan | head -1`: no traceback and no "Exception ignored" at exit. What is
    still buffered for stdout goes to /dev/null from here on."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_CLOSED_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # `--help` and `--version` exit here: no more imports
    import logging

    from reconciler.errors import ReconcilerError
    from reconciler.redact import printable

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # psycopg's pool logs each failed reconnect over several lines; our errors say it in one
    psycopg_logger = logging.getLogger("psycopg")
    level = psycopg_logger.level
    psycopg_logger.setLevel(logging.CRITICAL)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a reader gone (`| head`) is seen here, not at the interpreter's exit
        return code
    except ReconcilerError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            return _closed_pipe()
        if os.environ.get("RECONCILER_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__} (set RECONCILER_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    finally:
        psycopg_logger.setLevel(level)
