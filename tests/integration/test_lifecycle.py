"""The whole lifecycle of an org, against real Postgres and the emulator: orphans and `--prune`,
retirement, slug reuse, late webhooks, the delete guard rails, account changes and adoption by
name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.controller.run import Controller, Options
from reconciler.spec.loader import load_tree
from reconciler.state.store import StateWriter
from reconciler.webhooks.resolver import UnknownAssistant, WebhookError, WebhookResolver
from tests.helpers import (
    SpecDir,
    assert_no_traceback,
    create_assistant,
    deletes,
    emulator_stats,
    fault,
    key_of,
    live,
    mappings,
    org_doc,
    tagged,
)


def org_row(state: StateWriter, slug: str) -> dict[str, Any]:
    with state.pool.connection() as conn:
        cur = conn.execute(
            "SELECT id::text, status, retired_at, conditions FROM organizations WHERE slug = %s"
            " ORDER BY created_at DESC LIMIT 1",
            (slug,),
        )
        row = cur.fetchone()
        assert row is not None, slug
        return dict(zip([c.name for c in cur.description or ()], row, strict=True))


def webhook(assistant_id: str) -> bytes:
    call = {"assistantId": assistant_id}
    return json.dumps({"message": {"type": "end-of-call-report", "call": call}}).encode()


# -- orphans, --prune and retirement ---------------------------------------------------------


def test_orphan_listed_kept_without_prune_and_retired_with_it(
    specs: SpecDir, cli: Any, emulator: str, state: StateWriter, controller: Controller
) -> None:
    acme, globex = org_doc("acme"), org_doc("globex", secret="whsec-globex-late")
    specs.write(acme)
    path = specs.write(globex)
    assert cli("apply", str(specs.root)).code == 0
    path.unlink()

    plan = cli("plan", str(specs.root), "--format", "json", "--detailed-exitcode")
    assert plan.code == 0, plan.out + plan.err  # nothing would change without --prune
    doc = json.loads(plan.out)
    [entry] = [c for c in doc["changes"] if c["org"] == "globex"]
    assert (entry["address"], entry["action"], entry["orphaned"]) == ("org/globex", "noop", True)
    assert "--prune" in entry["reason"] and "2 tagged assistant(s)" in entry["reason"]
    assert doc["summary"]["orphaned"] == 1
    assert "orphaned" in cli("plan", str(specs.root)).out

    kept = cli("apply", str(specs.root))
    assert kept.code == 0 and deletes(emulator) == 0
    row = org_row(state, "globex")
    assert row["status"] == "Orphaned" and row["retired_at"] is None
    assert any(c["reason"] == "Orphaned" for c in row["conditions"])

    pruned = cli("plan", str(specs.root), "--prune", "--format", "json")
    kinds = sorted(c["action"] for c in json.loads(pruned.out)["changes"] if c["org"] == "globex")
    assert kinds == ["delete", "delete", "delete"]  # two assistants, then the org

    done = cli("apply", str(specs.root), "--prune")
    assert done.code == 0, done.out + done.err
    assert deletes(emulator) == 2 and tagged(emulator, globex) == []
    assert len(tagged(emulator, acme)) == 2  # the other org untouched
    row = org_row(state, "globex")
    assert row["status"] == "Retired" and row["retired_at"] is not None
    with state.pool.connection() as conn:
        creds = conn.execute(
            "SELECT provider, is_active, encrypted_config, webhook_only_until IS NOT NULL"
            " FROM org_credentials WHERE org_id = %s",
            (row["id"],),
        ).fetchall()
        assert conn.execute(
            "SELECT count(*) FROM assistants WHERE org_id = %s", (row["id"],)
        ).fetchone() == (0,)
    [(provider, active, sealed, kept_for_webhooks)] = creds
    assert (provider, active, kept_for_webhooks) == ("vapi", False, True)
    config = controller.key.decrypt(sealed, aad=f"{row['id']}:vapi")
    assert config == {"webhookSecret": "whsec-globex-late"}  # the API key is gone
    assert all(not active for _, _, active in mappings(state.pool, row["id"]))

    again = cli("plan", str(specs.root), "--prune", "--detailed-exitcode")
    assert again.code == 0 and "globex" not in again.out  # retired: no longer planned


def test_late_webhooks_of_a_retired_org_verify_until_the_window_ends(
    specs: SpecDir, controller: Controller, state: StateWriter
) -> None:
    globex = org_doc("globex", secret="whsec-globex-late")
    path = specs.write(globex)
    specs.write(org_doc("acme"))  # an empty folder is a failure: it never prunes anything
    assert controller.apply(load_tree(specs.root)).ok
    org_id = globex["metadata"]["id"]
    [(_, inbound, _), _] = mappings(state.pool, org_id)
    path.unlink()
    options = Options(prune=True, orphans=True)
    assert controller.apply(load_tree(specs.root), options=options).ok

    resolver = WebhookResolver(state, controller.key)
    hit = resolver.resolve({"x-vapi-secret": "whsec-globex-late"}, webhook(inbound))
    assert (hit.slug, hit.org_id, hit.role) == ("globex", org_id, "inbound")
    with pytest.raises(Exception, match="secret"):  # a wrong secret is still refused
        WebhookResolver(state, controller.key).resolve({"x-vapi-secret": "nope"}, webhook(inbound))

    def later(sql: str) -> None:
        with state.pool.connection() as conn:
            conn.execute(sql, (org_id,))

    # the retired org's webhook secret outlives its window: nothing verifies any more
    later(
        "UPDATE org_credentials SET webhook_only_until = now() - interval '1 second'"
        " WHERE org_id = %s"
    )
    with pytest.raises(WebhookError):
        WebhookResolver(state, controller.key).resolve(
            {"x-vapi-secret": "whsec-globex-late"}, webhook(inbound)
        )
    # the mapping outlives the retention window: the assistant is unknown, even before any
    # apply removes the row
    later(
        "UPDATE assistant_org_mapping SET inactive_at = now() - interval '31 days'"
        " WHERE org_id = %s"
    )
    with pytest.raises(UnknownAssistant):
        WebhookResolver(state, controller.key).resolve(
            {"x-vapi-secret": "whsec-globex-late"}, webhook(inbound)
        )
    assert controller.apply(load_tree(specs.root)).ok  # any apply removes expired rows
    assert mappings(state.pool, org_id) == []
    with state.pool.connection() as conn:
        assert conn.execute(
            "SELECT count(*) FROM org_credentials WHERE org_id = %s", (org_id,)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM organizations WHERE id = %s", (org_id,)
        ).fetchone() == (1,)  # the org's row and history stay
    with pytest.raises(UnknownAssistant):
        WebhookResolver(state, controller.key).resolve(
            {"x-vapi-secret": "whsec-globex-late"}, webhook(inbound)
        )


def test_a_pruned_role_keeps_resolving_its_late_webhooks(
    specs: SpecDir, controller: Controller, state: StateWriter, emulator: str
) -> None:
    doc = org_doc("acme", secret="whsec-acme-1")
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    outbound = next(
        vid for role, vid, _ in mappings(state.pool, doc["metadata"]["id"]) if role == "outbound"
    )
    del doc["spec"]["assistants"]["outbound"]
    specs.write(doc)
    assert controller.apply(load_tree(specs.root), prune=True).ok
    assert deletes(emulator) == 1
    assert ("outbound", outbound, False) in mappings(state.pool, doc["metadata"]["id"])
    hit = WebhookResolver(state, controller.key).resolve(
        {"x-vapi-secret": "whsec-acme-1"}, webhook(outbound)
    )
    assert (hit.slug, hit.role) == ("acme", "outbound")


def test_a_retired_slug_is_taken_by_a_new_org_in_the_same_run(
    specs: SpecDir, cli: Any, emulator: str, state: StateWriter
) -> None:
    old = org_doc("globex")
    specs.write(old)
    assert cli("apply", str(specs.root)).code == 0
    new = org_doc("globex")  # a new id, and its own Vapi account
    specs.write(new)
    refused = cli("apply", str(specs.root))
    assert refused.code == 1 and "`apply --prune` retires it and frees the slug" in refused.out
    done = cli("apply", str(specs.root), "--prune")
    assert done.code == 0, done.out + done.err
    assert tagged(emulator, old) == [] and len(tagged(emulator, new)) == 2
    with state.pool.connection() as conn:
        rows = conn.execute(
            "SELECT id::text, retired_at IS NOT NULL FROM organizations WHERE slug = 'globex'"
            " ORDER BY 2"
        ).fetchall()
    assert rows == [(new["metadata"]["id"], False), (old["metadata"]["id"], True)]


def test_org_retire_by_name(specs: SpecDir, cli: Any, emulator: str, state: StateWriter) -> None:
    doc = org_doc("acme")
    path = specs.write(doc)
    assert cli("apply", str(specs.root)).code == 0
    refused = cli("org", "retire", "acme", "--yes", "--path", str(specs.root))
    assert refused.code == 1 and "still in" in refused.err and deletes(emulator) == 0
    unknown = cli("org", "retire", "nobody", "--yes", "--path", str(specs.root))
    assert unknown.code == 1 and "no live org" in unknown.err
    path.unlink()
    done = cli("org", "retire", "acme", "--yes", "--path", str(specs.root))
    assert done.code == 0, done.out + done.err
    assert deletes(emulator) == 2 and org_row(state, "acme")["status"] == "Retired"
    assert_no_traceback(done)


# -- guard rails -----------------------------------------------------------------------------


@pytest.mark.parametrize("breakage", ["yaml", "decrypt"])
def test_an_org_whose_spec_fails_to_load_is_never_pruned(
    specs: SpecDir, cli: Any, emulator: str, state: StateWriter, breakage: str, tmp_path: Any
) -> None:
    doc = org_doc("acme")
    path = specs.write(doc)
    specs.write(org_doc("globex"))
    assert cli("apply", str(specs.root)).code == 0
    if breakage == "yaml":
        path.write_text("apiVersion: [unclosed\n")
    else:  # encrypted to a key we do not hold
        import pyrage

        other = SpecDir(tmp_path / "other", str(pyrage.x25519.Identity.generate().to_public()))
        other.write(doc)
        path.write_bytes((other.root / "acme.yaml").read_bytes())
    run = cli("apply", str(specs.root), "--prune")
    assert run.code == 1  # the file's failure
    assert deletes(emulator) == 0 and len(tagged(emulator, doc)) == 2
    assert org_row(state, "acme")["retired_at"] is None
    assert_no_traceback(run)


def test_max_deletes_bounds_a_run(specs: SpecDir, cli: Any, emulator: str) -> None:
    docs = [org_doc(f"org{i}") for i in range(4)]
    paths = [specs.write(d) for d in docs]
    assert cli("apply", str(specs.root)).code == 0
    for p in paths[1:]:
        p.unlink()  # 3 orgs, 6 assistants
    over = cli("apply", str(specs.root), "--prune")
    assert over.code == 1 and "--max-deletes" in over.out + over.err
    assert deletes(emulator) == 0
    done = cli("apply", str(specs.root), "--prune", "--max-deletes", "6")
    assert done.code == 0, done.out + done.err
    assert deletes(emulator) == 6 and len(tagged(emulator, docs[0])) == 2


def test_delete_answered_404_counts_as_done(
    specs: SpecDir, controller: Controller, emulator: str, state: StateWriter
) -> None:
    doc = org_doc("acme")
    specs.write(doc)
    assert controller.apply(load_tree(specs.root)).ok
    del doc["spec"]["assistants"]["outbound"]
    specs.write(doc)
    fault(emulator, method="DELETE", path="/assistant/{id}", status=404, mode="error")
    report = controller.apply(load_tree(specs.root), prune=True)
    assert report.ok, report.failed
    assert [r for r, _, active in mappings(state.pool, doc["metadata"]["id"]) if active] == [
        "inbound"
    ]


def test_a_pinned_assistant_is_a_clear_error_for_its_org_only(
    specs: SpecDir, controller: Controller, emulator: str
) -> None:
    acme, globex = org_doc("acme"), org_doc("globex")
    for d in (acme, globex):
        del d["spec"]["assistants"]["outbound"]
    specs.write(org_doc("acme", org_id=acme["metadata"]["id"], api_key=key_of(acme)))
    specs.write(org_doc("globex", org_id=globex["metadata"]["id"], api_key=key_of(globex)))
    assert controller.apply(load_tree(specs.root)).ok
    specs.write(acme)
    specs.write(globex)
    [pinned] = [a["id"] for a in tagged(emulator, acme) if a["metadata"]["role"] == "outbound"]
    body = {"error": "assistant_pinned", "message": "Assistant is pinned", "statusCode": 409}
    fault(
        emulator, method="DELETE", path=f"/assistant/{pinned}", status=409, mode="error", body=body
    )
    report = controller.apply(load_tree(specs.root), prune=True)
    [failed] = report.failed
    assert failed.slug == "acme" and f"assistant {pinned} is pinned" in (failed.error or "")
    assert len(tagged(emulator, globex)) == 1  # the other org was pruned


# -- account change --------------------------------------------------------------------------


@pytest.mark.parametrize("account", ["empty", "listed"])
def test_an_account_change_is_refused_until_accepted(
    specs: SpecDir,
    cli: Any,
    emulator: str,
    state: StateWriter,
    controller: Controller,
    account: str,
) -> None:
    doc = org_doc("acme", secret="whsec-acme-1")
    specs.write(doc)
    assert cli("apply", str(specs.root)).code == 0
    org_id = doc["metadata"]["id"]
    old_ids = [vid for _, vid, _ in mappings(state.pool, org_id)]
    moved = org_doc("acme", org_id=org_id, secret="whsec-acme-1")  # a key of another account
    if account == "listed":  # the listing shows the other account's orgId
        create_untagged(emulator, key_of(moved), "someone else's")
    specs.write(moved)

    plan = cli("plan", str(specs.root))
    assert plan.code == 1 and "--accept-account-change acme" in plan.out
    assert ("empty Vapi account" in plan.out) == (account == "empty")
    refused = cli("apply", str(specs.root))
    assert refused.code == 1 and tagged(emulator, moved) == []

    preview = cli("plan", str(specs.root), "--accept-account-change", "acme")
    assert preview.code == 0 and "Vapi account" in preview.out
    done = cli("apply", str(specs.root), "--accept-account-change", "acme")
    assert done.code == 0, done.out + done.err
    assert len(tagged(emulator, moved)) == 2 and len(tagged(emulator, doc)) == 2  # old left
    rows = mappings(state.pool, org_id)
    assert sorted(vid for _, vid, active in rows if not active) == sorted(old_ids)
    hit = WebhookResolver(state, controller.key).resolve(
        {"x-vapi-secret": "whsec-acme-1"}, webhook(old_ids[0])
    )
    assert hit.slug == "acme"  # the old account's late webhooks still reach the org
    assert cli("plan", str(specs.root), "--detailed-exitcode").code == 0


# -- adoption by name ------------------------------------------------------------------------


def create_untagged(emulator: str, api_key: str, name: str) -> str:
    """An assistant made in the account before the reconciler came: no tag, a legacy greeting."""
    created = create_assistant(emulator, api_key, {"name": name, "firstMessage": "legacy"})
    return str(created["id"])


def test_an_untagged_namesake_is_reported_and_left_alone(
    specs: SpecDir, cli: Any, emulator: str
) -> None:
    doc = org_doc("acme")
    legacy = create_untagged(emulator, key_of(doc), "acme inbound")
    specs.write(doc)
    plan = json.loads(cli("plan", str(specs.root), "--format", "json").out)
    [entry] = [c for c in plan["changes"] if c["action"] == "unmanaged"]
    assert (entry["address"], entry["vapi_id"]) == ("org/acme/assistant/inbound", legacy)
    assert cli("apply", str(specs.root)).code == 0
    by_id = {a["id"]: a for a in live(emulator, key_of(doc))}
    assert len(by_id) == 3 and by_id[legacy]["firstMessage"] == "legacy"
    assert "metadata" not in by_id[legacy]  # never modified
    assert emulator_stats(emulator)["PATCH /assistant/{id}"] == 0


@pytest.mark.parametrize("how", ["spec", "flag"])
def test_adopt_by_name_tags_instead_of_creating(
    specs: SpecDir, cli: Any, emulator: str, how: str
) -> None:
    doc = org_doc("acme")
    legacy = create_untagged(emulator, key_of(doc), "acme inbound")
    if how == "spec":
        doc["spec"]["adopt"] = "byName"
    specs.write(doc)
    flags = ["--adopt-by-name"] if how == "flag" else []
    done = cli("apply", str(specs.root), *flags)
    assert done.code == 0, done.out + done.err
    stats = emulator_stats(emulator)
    assert stats["POST /assistant"] == 2  # the legacy one (by this test) and the outbound
    by_role = {a["metadata"]["role"]: a for a in tagged(emulator, doc)}
    assert by_role["inbound"]["id"] == legacy and by_role["inbound"]["firstMessage"] == "Hello!"
    assert cli("plan", str(specs.root), *flags, "--detailed-exitcode").code == 0


def test_adopt_by_name_refuses_an_ambiguous_name(specs: SpecDir, cli: Any, emulator: str) -> None:
    doc = org_doc("acme")
    doc["spec"]["adopt"] = "byName"
    for _ in range(2):
        create_untagged(emulator, key_of(doc), "acme inbound")
    specs.write(doc)
    run = cli("apply", str(specs.root))
    assert run.code == 1 and "adopting by name needs exactly one" in run.out
    assert emulator_stats(emulator)["POST /assistant"] == 2  # nothing created by apply


# -- serve ------------------------------------------------------------------------------------


def test_serve_with_prune_retires_orphans_once_and_bounds_deletes(
    controller: Controller, state: StateWriter, specs: SpecDir, emulator: str
) -> None:
    from reconciler.controller.loop import LoopConfig, ReconcileLoop

    docs = [org_doc(slug) for slug in ("acme", "beta", "gamma", "delta")]
    paths = [specs.write(d) for d in docs]
    loop = ReconcileLoop(
        controller, state, LoopConfig(specs.root, prune=True, max_deletes=3), replica="t"
    )
    first = loop.run_once()
    assert first is not None and first.ok
    paths[1].unlink()
    loop.trigger()
    loop.run_once()
    assert deletes(emulator) == 2 and org_row(state, "beta")["status"] == "Retired"
    loop.trigger()
    loop.run_once()  # retired: not an orphan any more, nothing listed for it
    assert deletes(emulator) == 2
    paths[2].unlink()
    paths[3].unlink()  # 4 deletes to retire both, past the bound of 3: none at all
    loop.trigger()
    report = loop.run_once()
    assert report is not None and deletes(emulator) == 2
    assert any("--max-deletes 3" in n for n in report.notes)
    assert org_row(state, "gamma")["retired_at"] is None


def test_serve_bounds_the_deletes_of_the_whole_run_across_batches_and_orphans(
    controller: Controller, state: StateWriter, specs: SpecDir, emulator: str
) -> None:
    """One org per batch: the bound is the run's (as `apply --max-deletes`), not each batch's,
    and an orphan's retirement counts in the same run."""
    from reconciler.controller.loop import LoopConfig, ReconcileLoop

    docs = [org_doc(slug) for slug in ("acme", "beta", "gamma")]
    paths = [specs.write(d) for d in docs]

    def loop(bound: int) -> ReconcileLoop:
        config = LoopConfig(specs.root, prune=True, max_deletes=bound, batch=1)
        return ReconcileLoop(controller, state, config, replica="t")

    first = loop(2).run_once()
    assert first is not None and first.ok
    for d in docs[:2]:  # one delete each, in two batches
        del d["spec"]["assistants"]["outbound"]
        specs.write(d)
    paths[2].unlink()  # gamma orphaned: two tagged assistants to delete when retired
    bounded = loop(3)
    bounded.trigger()
    report = bounded.run_once()
    assert report is not None and deletes(emulator) == 0, "4 deletes in one run, past 3: none"
    assert any(
        "would delete 4 assistants, numbers or tools, more than --max-deletes 3" in n
        for n in report.notes
    )
    assert org_row(state, "gamma")["retired_at"] is None
    assert org_row(state, "gamma")["status"] == "Orphaned"
    assert [o.slug for o in report.failed] == []  # the rest of each org converged
    assert org_row(state, "acme")["status"] == "Ready"

    within = loop(4)
    within.trigger()
    report = within.run_once()
    assert report is not None and report.ok, report.notes
    assert deletes(emulator) == 4
    assert org_row(state, "gamma")["status"] == "Retired"
    assert org_row(state, "acme")["status"] == "Ready"


# -- a spec file that fails is failing, never gone -------------------------------------------


@pytest.mark.parametrize(
    "breakage",
    ["invalid YAML", "tampered ciphertext", "renamed and invalid"],
)
def test_a_spec_file_that_fails_is_failing_never_orphaned(
    specs: SpecDir, cli: Any, emulator: str, state: StateWriter, breakage: str
) -> None:
    acme, globex = org_doc("acme"), org_doc("globex")
    specs.write(acme)
    path = specs.write(globex)
    assert cli("apply", str(specs.root)).code == 0
    if breakage == "invalid YAML":
        path.write_text("metadata: [unclosed\n")
    elif breakage == "tampered ciphertext":
        text = path.read_text()
        start = text.index("ENC[AES256_GCM,data:") + len("ENC[AES256_GCM,data:")
        flipped = "B" if text[start] != "B" else "C"
        path.write_text(text[:start] + flipped + text[start + 1 :])
    else:  # a new file name (not its slug) and a name too long: its id can still be read
        path.unlink()
        globex["metadata"]["name"] = "x" * 300
        specs.write(globex, name="globex-renamed")

    for fmt in ("text", "json", "markdown"):
        out = cli("plan", str(specs.root), "--prune", "--format", fmt)
        assert out.code == 1, out.out + out.err  # a file failed
        assert_no_traceback(out)
        if fmt == "json":
            doc = json.loads(out.out)
            assert doc["summary"]["orphaned"] == 0 and doc["summary"]["files_failed"] == 1
            assert [c for c in doc["changes"] if c["org"] == "globex"] == []
            assert not any(c["orphaned"] for c in doc["changes"])
            said = json.dumps([doc["errors"], doc["warnings"], doc["notes"]]).lower()
        else:
            said = (out.out + out.err).lower()
        assert "orphan" not in said and "gone" not in said, (fmt, out.out)
    run = cli("apply", str(specs.root), "--prune")
    assert run.code == 1 and deletes(emulator) == 0
    said = (run.out + run.err).lower()
    assert "orphan" not in said and "gone" not in said and "retire" not in said
    row = org_row(state, "globex")
    assert row["retired_at"] is None and row["status"] == "Stalled", row
    [ready] = [c for c in row["conditions"] if c["type"] == "Ready"]
    assert ready["reason"] in ("SpecInvalid", "DecryptionFailed")
    assert "orphan" not in ready["message"].lower() and "gone" not in ready["message"].lower()


def test_serve_reports_a_failing_file_as_failing_and_an_orphan_once_per_run(
    controller: Controller,
    state: StateWriter,
    specs: SpecDir,
    emulator: str,
    caplog: pytest.LogCaptureFixture,
    cli: Any,
) -> None:
    from reconciler import metrics
    from reconciler.controller.loop import LoopConfig, ReconcileLoop

    docs = [org_doc(slug) for slug in ("acme", "beta", "gamma")]
    paths = [specs.write(d) for d in docs]
    loop = ReconcileLoop(controller, state, LoopConfig(specs.root), replica="t")
    assert loop.run_once() is not None
    paths[1].write_text("metadata: [unclosed\n")  # beta: failing
    paths[2].unlink()  # gamma: orphaned (no --prune: left alone)
    for _ in range(2):
        caplog.clear()
        loop.trigger()
        with caplog.at_level("WARNING", logger="reconciler.controller.loop"):
            report = loop.run_once()
        assert report is not None
        orphan_lines = [r.getMessage() for r in caplog.records if "orphaned" in r.getMessage()]
        assert len(orphan_lines) == 1 and orphan_lines[0].startswith("org gamma is orphaned")
        assert not any("beta" in line for line in orphan_lines)
        assert metrics.ORGS_ORPHANED._value.get() == 1
    assert org_row(state, "gamma")["status"] == "Orphaned"
    assert org_row(state, "beta")["status"] == "Stalled"
    assert org_row(state, "acme")["status"] == "Ready"
    shown = {line.split()[0]: line.split()[1] for line in cli("status").out.splitlines()}
    assert shown["gamma"] == "Orphaned" and shown["beta"] == "Stalled"
    [view] = json.loads(cli("status", "--org", "gamma", "--format", "json").out)["orgs"]
    assert view["status"] == "Orphaned"
    assert deletes(emulator) == 0
    assert metrics.ORG_OUTCOMES.labels("gamma", "Orphaned")._value.get() >= 2


def test_a_prune_with_no_explicit_bound_uses_the_documented_default(
    controller: Controller, specs: SpecDir, emulator: str
) -> None:
    docs = [org_doc(f"org{i}") for i in range(6)]
    for d in docs:
        specs.write(d)
    assert controller.apply(load_tree(specs.root)).ok
    for d in docs:  # six deletes, one past the default bound of 5
        del d["spec"]["assistants"]["outbound"]
        specs.write(d)
    report = controller.apply(load_tree(specs.root), prune=True)
    assert deletes(emulator) == 0
    assert any("more than --max-deletes 5" in n for n in report.notes)
    report = controller.apply(load_tree(specs.root), options=Options(prune=True))
    assert deletes(emulator) == 0
