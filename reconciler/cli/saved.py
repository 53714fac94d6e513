"""Saved plans: `plan --out FILE` writes one, `apply FILE` runs exactly it.

The file holds no secret: the readable plan (the JSON of docs/plan-format.md, secrets masked),
the options it was made with, and per org the stamps of what it was computed from (the spec
file's digest, the observed state's digest with each assistant's `updatedAt`, the plan's own
digest). `apply FILE` reads the same specs, plans each org again under its lock and runs it
only when all three still match; otherwise that org is refused, named, and nothing of it runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.cli.render import report_json
from reconciler.controller.run import Options, RunReport
from reconciler.engine.runplan import MAX_DELETES
from reconciler.engine.stamp import OrgStamp
from reconciler.errors import ReconcilerError

FORMAT = "reconciler-plan"
VERSION = 1
MAX_BYTES = 64 * 1024 * 1024


class SavedPlanError(ReconcilerError):
    """A saved plan that cannot be read or used; the message names the file."""


@dataclass(frozen=True)
class SavedPlan:
    specs: Path  # the spec path the plan was made from
    orgs: tuple[str, ...]  # the `--org` filter it was made with
    options: Options
    stamps: dict[str, OrgStamp]  # by org id


def is_saved_plan(path: Path) -> bool:
    """A file that is not YAML by name and opens as a JSON object naming our format."""
    if not path.is_file() or path.suffix.lower() in (".yaml", ".yml"):
        return False
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and FORMAT.encode() in head


def write(path: Path, report: RunReport, options: Options, specs: Path, orgs: list[str]) -> int:
    """Writes the plan atomically (a temp file in the same folder, then a rename); returns the
    number of orgs it holds. Orgs that failed to plan are not in it: applying it refuses them."""
    stamps = {
        o.org_id: o.stamp.as_json()
        for o in report.outcomes
        if o.stamp is not None and o.ok and not o.skipped
    }
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reconciler": __version__,
        "specs": str(specs),
        "orgs": sorted(orgs),
        "options": {
            "prune": options.prune,
            "orphans": options.orphans,
            "max_deletes": options.max_deletes,
            "adopt_by_name": options.adopt_by_name,
            "accept_account_change": sorted(options.accept_account_change),
        },
        "stamps": stamps,
        "plan": report_json(report),
    }
    text = json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:
        raise SavedPlanError(f"{path}: cannot write the plan: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SavedPlanError(f"{path}: cannot write the plan: {exc.strerror}") from None
    return len(stamps)


def read(path: Path) -> SavedPlan:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SavedPlanError(f"{path}: not a saved plan (over {MAX_BYTES // 2**20} MiB)")
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise SavedPlanError(f"{path}: cannot read the plan: {exc.strerror}") from None
    except (ValueError, RecursionError):
        raise SavedPlanError(f"{path}: not a saved plan (not valid JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SavedPlanError(f"{path}: not a saved plan (made by `reconciler plan --out`)")
    if doc.get("version") != VERSION:
        raise SavedPlanError(
            f"{path}: saved plan version {doc.get('version')!r} is not {VERSION}: make a new plan"
        )
    try:
        return SavedPlan(
            Path(_text(doc.get("specs"), "specs")),
            tuple(_text(s, "orgs") for s in _list(doc.get("orgs"), "orgs")),
            _options(doc.get("options")),
            {_text(k, "stamps"): OrgStamp.from_json(v) for k, v in _dict(doc, "stamps").items()},
        )
    except (ValueError, TypeError) as exc:
        raise SavedPlanError(f"{path}: a damaged saved plan: {exc}") from None


def _options(data: Any) -> Options:
    if not isinstance(data, dict):
        raise ValueError("options must be an object")
    bools = ("prune", "orphans", "adopt_by_name")
    if not all(isinstance(data.get(k), bool) for k in bools):
        raise ValueError("options prune, orphans and adopt_by_name must be booleans")
    limit = data.get("max_deletes")
    if limit is None:  # a plan saved before the bound was always set: the documented default
        limit = MAX_DELETES
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError("options.max_deletes must be a whole number")
    accepted = _list(data.get("accept_account_change"), "options.accept_account_change")
    return Options(
        prune=data["prune"],
        orphans=data["orphans"],
        max_deletes=limit,
        adopt_by_name=data["adopt_by_name"],
        accept_account_change=frozenset(_text(s, "accept_account_change") for s in accepted),
    )


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must hold strings")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return value


def _dict(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be an object")
    return value
