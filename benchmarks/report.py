"""Where a benchmark's results go: one JSON of the figures and one markdown rendering, side by side."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: Path, stem: str, result: dict, markdown: str, log=print) -> None:
    """Write ``out/stem.json`` (the figures, with the command and machine that made them) and
    ``out/stem.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    log(f"wrote {out / stem}.json and {stem}.md")
