"""Finding, parsing, checking and decrypting spec files. Problems are collected, not raised,
so one broken file never hides the others."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from reconciler.errors import DecryptionError
from reconciler.secrets import sops
from reconciler.spec.models import Organization

_ENC = re.compile(r"^ENC\[[A-Z0-9_]+,data:.*\]$", re.DOTALL)
_PLACEHOLDER = "<encrypted>"


@dataclass(frozen=True)
class Problem:
    """One line of `validate` output: file, field path, message (never a value)."""

    path: Path
    field: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.field}: {self.message}"
            if self.field
            else f"{self.path}: {self.message}"
        )


@dataclass(frozen=True)
class SpecFile:
    path: Path
    org: Organization


@dataclass
class LoadResult:
    specs: list[SpecFile]
    problems: list[Problem]

    @property
    def bad_paths(self) -> set[Path]:
        return {p.path for p in self.problems}


def discover(root: Path) -> list[Path]:
    """`*.yaml` under root (recursively), sorted, skipping SOPS's own `.sops.yaml`."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.yaml") if p.name != ".sops.yaml" and p.is_file())


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a spec must not."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "found unhashable key", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def parse_yaml(path: Path, text: str | bytes) -> tuple[dict[str, Any] | None, list[Problem]]:
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        return None, [Problem(path, "", f"invalid YAML{where}: {problem}")]
    if not isinstance(doc, dict):
        return None, [Problem(path, "", "expected a mapping at the top level")]
    return doc, []


def _field_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_problems(path: Path, exc: ValidationError) -> list[Problem]:
    # Only loc and msg: pydantic's `input` may be a secret.
    return [
        Problem(path, _field_path(err["loc"]) or "(document)", err["msg"])
        for err in exc.errors(include_url=False, include_input=False)
    ]


def _check_encrypted(path: Path, doc: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """Every credentials leaf must be SOPS ciphertext; returns the doc with placeholders."""
    problems: list[Problem] = []
    creds = (
        (doc.get("spec") or {}).get("credentials") if isinstance(doc.get("spec"), dict) else None
    )
    if creds is None:
        return {k: v for k, v in doc.items() if k != "sops"}, problems
    if "sops" not in doc:
        problems.append(
            Problem(path, "sops", "credentials are present but the file is not SOPS-encrypted")
        )

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}") for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str) and _ENC.match(node):
            return _PLACEHOLDER
        problems.append(Problem(path, where, "plaintext secret: encrypt this file with sops"))
        return _PLACEHOLDER

    masked = dict(doc)
    masked.pop("sops", None)
    masked["spec"] = {**doc["spec"], "credentials": walk(creds, "spec.credentials")}
    return masked, problems


def check_file(path: Path) -> tuple[Organization | None, list[Problem]]:
    """Offline checks of one file as committed (encrypted): no key needed."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        return None, [Problem(path, "", f"cannot read: {exc.strerror}")]
    doc, problems = parse_yaml(path, text)
    if doc is None:
        return None, problems
    masked, problems = _check_encrypted(path, doc)
    try:
        org = Organization.model_validate(masked)
    except ValidationError as exc:
        return None, problems + _pydantic_problems(path, exc)
    if org.metadata.slug != path.stem:
        problems.append(
            Problem(
                path,
                "metadata.slug",
                f"{org.metadata.slug!r} differs from the file name {path.stem!r}",
            )
        )
    return (org if not problems else None), problems


def _cross_file_problems(checked: list[tuple[Path, Organization]]) -> list[Problem]:
    problems: list[Problem] = []
    for attr in ("id", "slug"):
        first: dict[str, Path] = {}
        for path, org in checked:
            value = str(getattr(org.metadata, attr))
            if value in first:  # both files are left out: neither may take the other's state
                problems.append(
                    Problem(path, f"metadata.{attr}", f"{value} is already used by {first[value]}")
                )
                problems.append(
                    Problem(first[value], f"metadata.{attr}", f"{value} is also used by {path}")
                )
            else:
                first[value] = path
    return problems


def validate_tree(root: Path) -> LoadResult:
    """`reconciler validate`: offline, every file, cross-file uniqueness."""
    paths = discover(root)
    if not paths:
        return LoadResult([], [Problem(root, "", "no spec files found (*.yaml)")])
    problems: list[Problem] = []
    checked: list[tuple[Path, Organization]] = []
    for path in paths:
        org, found = check_file(path)
        problems += found
        if org is not None:
            checked.append((path, org))
    problems += _cross_file_problems(checked)
    bad = {p.path for p in problems}
    return LoadResult([SpecFile(p, o) for p, o in checked if p not in bad], problems)


Decrypt = Callable[[Path], bytes]


def _decrypt_one(path: Path, decrypt: Decrypt) -> tuple[Organization | None, list[Problem]]:
    try:
        plain = decrypt(path)
    except DecryptionError as exc:
        return None, [Problem(path, "", str(exc).removeprefix(f"{path}: "))]
    doc, problems = parse_yaml(path, plain)
    if doc is None:
        return None, problems
    try:
        return Organization.model_validate(doc), []
    except ValidationError as exc:
        return None, _pydantic_problems(path, exc)


def load_tree(root: Path, decrypt: Decrypt = sops.decrypt_file, workers: int = 8) -> LoadResult:
    """Validated and decrypted specs; files with problems are left out and reported.

    Files whose credentials do not decrypt are reported like any other broken file, so the
    other orgs still converge.
    """
    checked = validate_tree(root)
    needs_sops = [s for s in checked.specs if _has_credentials(s.org)]
    results: dict[Path, tuple[Organization | None, list[Problem]]] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for spec, outcome in zip(
            needs_sops, pool.map(lambda s: _decrypt_one(s.path, decrypt), needs_sops), strict=True
        ):
            results[spec.path] = outcome
    specs: list[SpecFile] = []
    problems = list(checked.problems)
    for spec in checked.specs:
        org, found = results.get(spec.path, (spec.org, []))
        problems += found
        if org is not None:
            specs.append(SpecFile(spec.path, org))
    return LoadResult(specs, problems)


def _has_credentials(org: Organization) -> bool:
    return bool(org.spec.credentials.model_fields_set)
