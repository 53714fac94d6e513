"""Writing a benchmark's section into docs/benchmarks.md (replaced in place on re-runs)."""

from __future__ import annotations

from pathlib import Path


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [f"| {' | '.join(header)} |", "|---" * len(header) + "|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(lines)


def write_section(path: Path, key: str, title: str, command: str, body: str) -> None:
    marker = f"<!-- {key} -->"
    section = f"{marker}\n## {title}\n\nCommand: `{command}`\n\n{body}\n{marker}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if marker in text:
        head, _, rest = text.partition(marker)
        _, _, tail = rest.partition(marker)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
