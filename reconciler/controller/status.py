"""An org's outcome in a run, as Flux-style conditions (Ready, Reconciling, Stalled).

- Ready: True when the org converged (reason `UpToDate`, or `Applied` when this run changed
  something, or `UpToDateWithWarnings`); False otherwise, with the one-line reason.
- Reconciling: True while a retry is scheduled after a failure (`RetryScheduled`).
- Retired: an org whose spec is gone, retired by `apply --prune` (or `org retire`); one whose
  spec is gone but not pruned is Stalled with reason `Orphaned`, summarised as `Orphaned`. An
  org whose spec file is there but fails to load or decrypt is never orphaned: it is Stalled
  with its file's problem (`stalled_files`).
- Stalled: True when retrying cannot help until the spec changes: the file does not validate or
  decrypt, its slug belongs to another org, its Vapi key or account is another org's, or the
  plan is blocked. A file that does not validate or decrypt is not read again until it
  changes; an org stalled for the other reasons is retried with the failure backoff (another
  org's spec, or Vapi, may be what changes).

Pure: no I/O. The run writes a status row only when these change (or as a heartbeat).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from reconciler.spec.loader import Problem
from reconciler.state.store import OrgStatus

Condition = dict[str, str]
MESSAGE_LIMIT = 500


def _condition(kind: str, status: bool, reason: str, message: str) -> Condition:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
    }


def _did(changes: Mapping[str, int]) -> str:
    verbs = {"create": "created", "update": "updated", "delete": "deleted", "adopt": "adopted"}
    done = [f"{verbs.get(k, k)} {n}" for k, n in changes.items() if n]
    return ", ".join(done)


def ready(changes: Mapping[str, int], warnings: Iterable[str] = ()) -> tuple[Condition, ...]:
    warned = list(warnings)
    did = _did(changes)
    if warned:
        reason = "UpToDateWithWarnings"
        more = f" (and {len(warned) - 1} more)" if len(warned) > 1 else ""
        message = f"{did + '; ' if did else ''}warning: {warned[0]}{more}"
    elif did:
        reason, message = "Applied", did
    else:
        reason, message = "UpToDate", "converged"
    return (
        _condition("Ready", True, reason, message),
        _condition("Reconciling", False, reason, ""),
        _condition("Stalled", False, reason, ""),
    )


def failed(error: str) -> tuple[Condition, ...]:
    return (
        _condition("Ready", False, "ReconcileFailed", error),
        _condition("Reconciling", True, "RetryScheduled", "retrying with backoff"),
        _condition("Stalled", False, "ReconcileFailed", ""),
    )


def stalled(reason: str, error: str) -> tuple[Condition, ...]:
    return (
        _condition("Ready", False, reason, error),
        _condition("Reconciling", False, reason, ""),
        _condition("Stalled", True, reason, error),
    )


def retired(message: str) -> tuple[Condition, ...]:
    """Retired: its spec is gone (or `org retire`); row and history kept."""
    return (
        _condition("Ready", False, "Retired", message or "retired"),
        _condition("Reconciling", False, "Retired", ""),
        _condition("Stalled", False, "Retired", ""),
    )


def summary(conditions: tuple[Condition, ...]) -> str:
    by_type = {c["type"]: c["status"] for c in conditions}
    if any(c["reason"] == "Retired" for c in conditions):
        return "Retired"
    if any(c["reason"] == "Orphaned" for c in conditions):
        return "Orphaned"  # its spec is gone and it was not retired: never Ready
    if by_type.get("Stalled") == "True":
        return "Stalled"
    return "Ready" if by_type.get("Ready") == "True" else "Failed"


def stalled_files(
    problems: Iterable[Problem],
    org_by_slug: Mapping[str, str],
    revision: str | None,
    ids: Mapping[Path, str] | None = None,
) -> list[OrgStatus]:
    """Orgs known to Postgres whose spec file fails validation or decryption: Stalled with the
    file's first problem. (A file is named after its org's slug, or names its org's id in
    `ids`; one whose org never reached Postgres is reported by the run, not as an org.)"""
    known = set(org_by_slug.values())
    first: dict[Path, Problem] = {}
    for problem in problems:
        first.setdefault(problem.path, problem)
    out: list[OrgStatus] = []
    for path, problem in first.items():
        org_id = org_by_slug.get(path.stem)
        if org_id is None and ids is not None and ids.get(path) in known:
            org_id = ids[path]
        if org_id is None:
            continue
        reason = "DecryptionFailed" if "decrypt" in problem.message.lower() else "SpecInvalid"
        conditions = stalled(reason, str(problem))
        out.append(OrgStatus(org_id, "Stalled", str(problem), conditions, revision=revision))
    return out
