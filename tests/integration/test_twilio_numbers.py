"""Before a Twilio number is imported, the org's Twilio account must list it (issue 16): one
read of Twilio's IncomingPhoneNumbers per number to import (the emulator's Twilio stub here),
never on a no-op run; a number of another account is refused with nothing written, in Vapi or
in Postgres; a Twilio outage fails that org's create until a later run. The account SID and the
auth token show nowhere."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from reconciler.controller.run import Controller
from reconciler.spec.loader import load_tree
from reconciler.state.store import StateWriter
from tests.helpers import SpecDir, emulator_stats, twilio_number, twilio_outage
from tests.integration.test_kinds import TWILIO, listed, rows, tenant

OTHER_SID = "AC" + "1" * 32
TWILIO_READ = "GET /_stubs/twilio/IncomingPhoneNumbers"
SECRETS = (TWILIO["accountSid"], TWILIO["authToken"], OTHER_SID)


def twilio_reads(emulator: str) -> int:
    return emulator_stats(emulator)[TWILIO_READ]


def number_rows(state: StateWriter, doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    return rows(
        state,
        "SELECT name, status FROM vapi_resources WHERE org_id = %s AND kind = 'phoneNumber'",
        doc["metadata"]["id"],
    )


def recorded(state: StateWriter) -> str:
    """Everything the runs wrote about orgs and runs, as one string."""
    return " ".join(
        str(r)
        for sql in (
            "SELECT * FROM organizations",
            "SELECT * FROM org_runs",
            "SELECT * FROM reconcile_runs",
        )
        for r in rows(state, sql)
    )


def test_a_number_of_the_orgs_account_is_imported_after_one_read_each(
    specs: SpecDir, controller: Controller, emulator: str, caplog: pytest.LogCaptureFixture
) -> None:
    doc = tenant("acme")
    for number in ("+14155550100", "+14155550101"):
        twilio_number(emulator, TWILIO["accountSid"], number)
    specs.write(doc)
    caplog.set_level(logging.DEBUG, logger="httpx")
    report = controller.apply(load_tree(specs.root))
    assert report.ok, [o.error for o in report.failed]
    stats = emulator_stats(emulator)
    assert stats[TWILIO_READ] == 2 == stats["POST /phone-number"]  # one read per import
    assert sorted(n["number"] for n in listed(emulator, doc, "/phone-number")) == [
        "+14155550100",
        "+14155550101",
    ]
    assert "IncomingPhoneNumbers" in caplog.text  # the read is logged, its SID masked
    assert not any(secret in caplog.text for secret in SECRETS)

    again = controller.apply(load_tree(specs.root))  # a no-op run: no Twilio call at all
    assert again.ok and not again.has_changes
    assert not controller.plan(load_tree(specs.root)).has_changes  # plan never calls Twilio
    assert twilio_reads(emulator) == 2


def test_a_number_of_another_account_is_refused_and_nothing_is_written(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    acme = tenant("acme")
    globex = tenant("globex", numbers=("+14155550177", "+14155550178"))
    twilio_number(emulator, OTHER_SID, "+14155550100")  # another account's
    twilio_number(emulator, TWILIO["accountSid"], "+141555501009")  # holds acme's, not it
    for number in ("+14155550101", "+14155550177", "+14155550178"):
        twilio_number(emulator, TWILIO["accountSid"], number)
    specs.write(acme)
    specs.write(globex)
    report = controller.apply(load_tree(specs.root))
    failed = {o.slug: o.error for o in report.failed}
    assert failed == {
        "acme": "+14155550100 is not a number of acme's Twilio account (sensitive): "
        "nothing imported"
    }
    assert listed(emulator, acme, "/phone-number") == []  # nothing POSTed for acme
    assert emulator_stats(emulator)["POST /phone-number"] == 2  # globex's two
    assert len(listed(emulator, globex, "/phone-number")) == 2
    assert number_rows(state, acme) == []  # no create-pending row left behind
    assert len(number_rows(state, globex)) == 2
    assert twilio_reads(emulator) == 3  # acme stopped at its first number
    # every create is vetted before the org's first Vapi write: nothing of acme was made in
    # Vapi (no tool, no assistant), while globex went ahead
    stats = emulator_stats(emulator)
    assert (stats["POST /tool"], stats["POST /assistant"]) == (3, 2)  # globex's alone
    status = rows(
        state,
        "SELECT status, status_message FROM organizations WHERE id = %s",
        acme["metadata"]["id"],
    )
    assert status == [("Failed", failed["acme"])]
    assert not any(secret in recorded(state) for secret in SECRETS)

    twilio_number(emulator, TWILIO["accountSid"], "+14155550100")  # ported into its account
    again = controller.apply(load_tree(specs.root))
    assert again.ok, [o.error for o in again.failed]
    assert len(listed(emulator, acme, "/phone-number")) == 2


def test_a_twilio_outage_fails_the_orgs_create_and_the_next_run_imports(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    doc = tenant("acme")
    for number in ("+14155550100", "+14155550101"):
        twilio_number(emulator, TWILIO["accountSid"], number)
    specs.write(doc)
    twilio_outage(emulator, 503)  # until cleared
    report = controller.apply(load_tree(specs.root))
    (outcome,) = report.failed
    assert outcome.error == (
        "phone number +14155550100: could not check that it is a number of acme's Twilio "
        "account (Twilio answered 503 Internal Server Error (error 20500)): nothing imported; "
        "the next run tries again"
    )
    assert outcome.stalled is None  # a retry may help: Failed, not Stalled
    assert emulator_stats(emulator)["POST /phone-number"] == 0
    assert number_rows(state, doc) == []

    twilio_outage(emulator, None)
    again = controller.apply(load_tree(specs.root))
    assert again.ok, [o.error for o in again.failed]
    assert sorted(number_rows(state, doc)) == [("+14155550100", "ready"), ("+14155550101", "ready")]


def test_the_cli_shows_the_refusal_on_one_line_and_no_secret(
    cli: Any, specs: SpecDir, emulator: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RECONCILER_TWILIO_BASE_URL", f"{emulator}/_stubs/twilio")
    doc = tenant("acme")
    twilio_number(emulator, OTHER_SID, "+14155550100")
    specs.write(doc)
    line = "+14155550100 is not a number of acme's Twilio account (sensitive): nothing imported"
    for command in (
        ("apply", str(specs.root)),
        ("status",),
        ("status", "--format", "json"),
    ):
        run = cli(*command)
        assert run.code == 1 or command[0] == "status", run.out + run.err
        shown = run.out + run.err
        assert line in shown, shown
        assert not any(secret in shown for secret in SECRETS)
    assert emulator_stats(emulator)["POST /phone-number"] == 0
