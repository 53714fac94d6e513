"""Defaults that the command line's parser shows: a module of constants only, so that
`reconciler --help` reads them without loading the engine."""

from __future__ import annotations

MAX_DELETES = 5
"""The documented default of `--max-deletes`: a run that prunes with no explicit bound."""
MAX_TEMPLATE_ORGS = 10
"""The documented default of `--max-template-orgs`: orgs one run may move to a template
version."""
