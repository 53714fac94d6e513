"""Vapi's official Python SDK (vapi-server-sdk), loaded the cheap way for the tests that drive the
emulator with it."""

from __future__ import annotations

from typing import Any


def _left_to_pydantic(model: Any, **localns: Any) -> None:
    """Pydantic completes a model whose references were not resolved at class creation the first
    time it is used, with the same result as rebuilding it at import."""


def load_sdk_lazily() -> None:
    """Call before the first `import vapi...`: the SDK then loads in about a quarter of the CPU.

    At import the SDK rebuilds 35 models' schemas (`update_forward_refs`), each a walk of the whole
    assistant schema: about 12 s of CPU on an idle core, paid again by every worker that loads
    it. Left to pydantic, only the models a test uses are completed, on first use. The SDK's own
    parsing is unchanged, and the tests assert on what it parses (types, dates, nested values)."""
    import vapi.core.pydantic_utilities as utilities

    utilities.update_forward_refs = _left_to_pydantic
