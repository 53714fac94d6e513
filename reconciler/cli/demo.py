"""`reconciler demo`: the whole flow on the examples, with nothing to set up.

Embedded Postgres in a temporary directory, the Vapi emulator in-process, the demo age key.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape

from reconciler.cli.render import render_text
from reconciler.config import Settings
from reconciler.errors import ConfigError
from reconciler.secrets.crypto import MasterKey
from reconciler.server.runtime import runtime
from reconciler.spec import loader
from reconciler.state.db import temporary_embedded
from reconciler.vapi.emulator import running_emulator
from reconciler.webhooks.resolver import BadSecret, WebhookResolver


def run_demo(path: Path, out: Console) -> int:
    agekey = path / "demo.agekey"
    if not agekey.exists():
        raise ConfigError(f"{agekey} not found: run the demo from the repository root")
    os.environ["SOPS_AGE_KEY_FILE"] = str(agekey)  # the demo key, whatever the user has set

    out.rule("1. validate (offline, no keys)")
    checked = loader.validate_tree(path)
    for problem in checked.problems:
        out.print(f"[red]{escape(str(problem))}[/red]")
    out.print(f"{len(checked.specs)} spec(s) valid")
    if checked.problems:
        return 1

    with (
        tempfile.TemporaryDirectory(prefix="reconciler-demo-") as tmp,
        temporary_embedded(Path(tmp)) as database,
        running_emulator(normalise=True) as url,  # server defaults as Vapi fills them
    ):
        settings = Settings(
            RECONCILER_DATABASE_URL=SecretStr(database),
            RECONCILER_DATA_DIR=Path(tmp),
            VAPI_BASE_URL=url,
            RECONCILER_MASTER_KEY=SecretStr(MasterKey.generate().to_b64()),
        )
        out.print(f"[dim]embedded Postgres in {tmp}; Vapi emulator at {url}[/dim]")
        loaded = loader.load_tree(path)

        with runtime(settings, write=True) as rt:
            out.rule("2. plan")
            render_text(rt.controller.plan(loaded), out)
            out.rule("3. apply")
            applied = rt.controller.apply(loaded)
            render_text(applied, out, verb="Applied")
            out.rule("4. plan again: nothing to do")
            again = rt.controller.plan(loaded)
            render_text(again, out)

            out.rule("5. a Vapi webhook, resolved to its org")
            spec = loaded.specs[0].org
            row = rt.state.observe([str(spec.metadata.id)])[str(spec.metadata.id)]
            assistant_id = row["mappings"][0]["vapi_assistant_id"]
            body = json.dumps(
                {"message": {"type": "status-update", "call": {"assistantId": assistant_id}}}
            ).encode()
            vapi = spec.spec.credentials.vapi
            assert vapi is not None
            secret = vapi.webhook_secret.get_secret_value()
            resolver = WebhookResolver(rt.state, rt.key)
            hit = resolver.resolve({"x-vapi-secret": secret}, body)
            out.print(
                f"assistant {assistant_id} -> org [bold]{hit.slug}[/bold] ({hit.org_id}), "
                f"role {hit.role}, secret verified"
            )
            try:
                resolver.resolve({"x-vapi-secret": "forged"}, body)
            except BadSecret as exc:
                out.print(f"a forged secret is refused: {exc}")
        ok = applied.ok and not again.has_changes and again.ok
        out.rule("done" if ok else "[red]demo failed[/red]")
        return 0 if ok else 1
