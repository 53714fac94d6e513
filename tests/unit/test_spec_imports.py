"""`validate` (the pre-commit hook, CI) reads and checks specs offline: it loads neither the
SOPS decryptor nor what only an unknown key or a decryption needs."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT

NEVER = ("reconciler.secrets.native", "difflib", "concurrent.futures")


def test_validate_loads_no_decryptor() -> None:
    code = (
        "import contextlib, io, sys\n"
        "from reconciler.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = main(['validate', {str(ROOT / 'specs' / 'examples')!r}])\n"
        f"print(code, sorted(m for m in {NEVER!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip().splitlines()[-1] == "0 []", proc.stdout + proc.stderr


def test_an_unknown_key_still_gets_its_guess() -> None:

    from reconciler.spec.loader import check_bytes

    path = ROOT / "specs" / "examples" / "acme-dental.yaml"  # its templates beside it
    text = path.read_text()
    _, problems = check_bytes(path, text.replace("firstMessage:", "firstMesage:", 1).encode())
    assert any("did you mean 'firstMessage'?" in str(p) for p in problems), problems
