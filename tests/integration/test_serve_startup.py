"""`serve` says what it is doing at start-up (issue 15): the listen address, where the specs
come from, how many files and orgs, the interval, whether the status API is on (and why not),
where webhooks are forwarded and which endpoints credential checks call; never a secret."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers import SpecDir, org_doc
from tests.helpers.serve import ServeLauncher, assert_clean_log, wait_until

ADMIN_TOKEN = "admin-TOKEN-4f9c2e"  # a canary
GIT_TOKEN = "ghp_GITTOKEN8d1a"  # a canary
FORWARD = "https://app.example.com/hooks/PATHTOKEN71?key=QUERYTOKEN93"


def test_a_folder_source_says_what_it_does_and_no_secret(
    launcher: ServeLauncher, specs: SpecDir, emulator: str
) -> None:
    acme, beta = org_doc("acme"), org_doc("beta")
    specs.write(acme)
    specs.write(beta)
    (specs.root / "broken.yaml").write_text("apiVersion: reconciler/v1\nkind: [\n")
    serve = launcher.start(
        str(specs.root),
        "--prune",
        env={
            "VAPI_BASE_URL": None,
            "RECONCILER_PROVIDER_STUBS": emulator,
            "RECONCILER_FORWARD_URL": FORWARD,
            "RECONCILER_ADMIN_TOKEN": None,
        },
        wait_ready=False,
    )
    wait_until(lambda: "specs: 3 file(s)" in serve.log(), 30.0, "the spec count is logged")
    assert serve.stop()[0] == 0
    log = serve.log()
    assert_clean_log(log)
    port = serve.port
    expected = [
        f"serving on 127.0.0.1:{port} as replica ",
        f"specs: folder {specs.root.absolute()}; reconciling every 1s; --prune: removed "
        "assistants deleted and orphaned orgs retired, at most 5 deletes a run",
        "status API: off (RECONCILER_ADMIN_TOKEN is not set)",
        "webhooks: POST /webhooks/vapi, checked against the org's secret, forwarded to "
        "https://app.example.com "
        "(RECONCILER_FORWARD_URL; an org's spec.webhook.forwardUrl wins)",
        f"credential checks every 6h (local stubs: RECONCILER_PROVIDER_STUBS) call: "
        f"vapi {emulator}, twilio {emulator}/_stubs/twilio, resend {emulator}/_stubs/resend, "
        f"elevenlabs {emulator}/_stubs/elevenlabs, google_oauth {emulator}/_stubs/google/token, "
        f"google_calendar {emulator}/_stubs/google/calendar/v3",
        "specs: 3 file(s), 2 org(s), 1 failing to load",
    ]
    for line in expected:
        assert f"INFO reconciler.serve: {line}" in log or f": {line}" in log, (line, log)
    assert log.count("specs: 3 file(s)") == 1  # said again only when it changes
    for secret in ("PATHTOKEN71", "QUERYTOKEN93", "/hooks", *_secrets(acme, beta)):
        assert secret not in log


def test_a_git_source_in_json_masks_its_token_and_says_why_checks_are_off(
    launcher: ServeLauncher,
) -> None:
    url = f"https://x-access-token:{GIT_TOKEN}@127.0.0.1:1/acme/specs.git"
    serve = launcher.start(
        "specs",
        "--git-url",
        url,
        "--git-ref",
        "release",
        "--log-format",
        "json",
        env={"RECONCILER_ADMIN_TOKEN": ADMIN_TOKEN, "RECONCILER_VERIFY_INTERVAL": "0"},
        wait_ready=False,
    )
    wait_until(lambda: "credential checks" in serve.log(), 30.0, "the start-up lines")
    assert serve.stop()[0] == 0
    log = serve.log()
    assert_clean_log(log)
    messages = [json.loads(line)["message"] for line in log.splitlines()]  # every line JSON
    source = next(m for m in messages if m.startswith("specs: git https://"))
    # masked by `shown_url` (user:***@), then by the log's own redaction
    assert "@127.0.0.1:1/acme/specs.git at release, path specs in it" in source
    assert "status API: on at /api/*, authorized by RECONCILER_ADMIN_TOKEN" in messages
    assert any(
        m.startswith(
            "webhooks: POST /webhooks/vapi, checked against the org's secret, forwarded only for orgs with"
        )
        for m in messages
    )
    checks = next(m for m in messages if m.startswith("credential checks"))
    assert checks.startswith("credential checks: off (RECONCILER_VERIFY_INTERVAL=0)")
    assert "twilio https://api.twilio.com" in checks
    assert GIT_TOKEN not in log
    assert ADMIN_TOKEN not in log


def _secrets(*docs: dict[str, Any]) -> list[str]:
    return [v for d in docs for c in d["spec"]["credentials"].values() for v in c.values()]
