"""What the benchmarks share: writing one section of benchmarks/README.md, the machine's CPU model."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).parent / "README.md"


def update_readme(section: str, body: str, path: Path = README) -> None:
    """Replace (or append) the ``## section`` of the README with ``body``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEach script prints one table and writes its latest results here.\n"
    lines = text.splitlines()
    head = f"## {section}"
    try:
        start = lines.index(head)
    except ValueError:
        new = text.rstrip("\n") + f"\n\n{head}\n\n{body.strip()}\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "\n".join(lines[:start] + [head, "", body.strip(), ""] + lines[end:]).rstrip("\n") + "\n"
    path.write_text(new)


def cpu_model(default: str = "?") -> str:
    """The CPU model name from /proc/cpuinfo (``default`` where it cannot be read)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default
