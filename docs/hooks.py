"""MkDocs hooks (mkdocs.yml `hooks:`): local only, nothing is fetched.

The pages link the committed reports and figures where they live, outside docs/: `../results/`
(the reproduction's table and plots) and `../benchmarks/` (the benchmark tables and graphs), so
the links also work when the Markdown is read in the repository. MkDocs only builds files under
docs/, so these hooks add those folders' reports and figures to the site under the same names
and point the pages' links at them there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

# The folders the pages link into, and the kinds of file the site shows from them (their data:
# records, JSON, code stays in the repository).
FOLDERS = ("results", "benchmarks")
SHOWN = {".md", ".png", ".svg"}
LINK = re.compile(r"(\]\(|src=\")\.\./(" + "|".join(FOLDERS) + r")/")


def on_files(files: Files, config: Any) -> Files:
    root = Path(config["docs_dir"]).resolve().parent  # the repository: docs/ is in it
    for folder in FOLDERS:
        for path in sorted((root / folder).iterdir()):
            if path.is_file() and path.suffix in SHOWN:
                files.append(
                    File(
                        f"{folder}/{path.name}",
                        src_dir=str(root),
                        dest_dir=config["site_dir"],
                        use_directory_urls=config["use_directory_urls"],
                        # linked from the pages, not in the nav (which lists every docs/ page)
                        inclusion=InclusionLevel.NOT_IN_NAV,
                    )
                )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    # `docs/x.md` -> `../results/a.png` in the repository is `results/a.png` in the site.
    return LINK.sub(r"\1\2/", markdown)
