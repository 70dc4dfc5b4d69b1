"""MkDocs hooks: pages whose content comes from the code and from files others add.

- ``<!-- config-reference -->`` becomes the reference generated from the settings models;
- ``<!-- benchmark-files -->`` becomes a list of links to the pages under ``docs/benchmarks/``
  that exist at build time (other people write them; a fixed list would break strict builds);
- the test options of a code fence (```` ```python notest ````, ``continuation``, read by
  pytest-markdown-docs) are dropped: superfences would not render such a fence as code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))

from gen_config_reference import render  # noqa: E402

#: A fence's language followed by words without ``=`` or braces: the test runner's options.
_TEST_OPTIONS = re.compile(r"^(\s*```+\s*(?:python|py|python3))[ \t]+[\w:. \t-]+$", re.MULTILINE)


def _drop_test_options(markdown: str) -> str:
    return _TEST_OPTIONS.sub(r"\1", markdown)


def _benchmark_links(page_path: str) -> str:
    pages = sorted((DOCS / "benchmarks").glob("*.md")) if (DOCS / "benchmarks").is_dir() else []
    if not pages:
        return "_No benchmark pages have been written yet._"
    depth = len(Path(page_path).parent.parts)
    prefix = "../" * depth
    lines = []
    for page in pages:
        title = page.stem.replace("-", " ").replace("_", " ")
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
                break
        lines.append(f"- [{title}]({prefix}benchmarks/{page.name})")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    markdown = _drop_test_options(markdown)
    if "<!-- config-reference -->" in markdown:
        markdown = markdown.replace("<!-- config-reference -->", render())
    if "<!-- benchmark-files -->" in markdown:
        markdown = markdown.replace("<!-- benchmark-files -->", _benchmark_links(page.file.src_uri))
    return markdown
