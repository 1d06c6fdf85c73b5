"""Open the built site in headless Chromium: screenshots of key pages and checks of what they show.

Run after ``mkdocs build`` (needs a ``chromium`` binary; not part of CI)::

    python docs/check_site.py [--site site] [--out site-check]

It serves ``site/`` on localhost, loads every API page, recipe notebook and results page in
Chromium (JavaScript on, as a reader sees them), and checks that each API page shows an entry for
every public name of its group, that each notebook page shows printed output and at least one
plot, that each results page shows its table, and that equations are typeset with the network
cut off (MathJax is served by the site). Screenshots of a few pages go to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # no network but the local server: MathJax and everything else must come from the site itself
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


def _chromium(browser: str, url: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=8000", *args, url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {result.stderr[-2000:]}")
    return result.stdout


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    """Check the site; print one line per page and return 1 if any check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default=str(ROOT / "site"))
    parser.add_argument("--out", default=str(ROOT / "site-check"))
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    site, out = Path(args.site), Path(args.out)
    if not (site / "index.html").is_file():
        parser.error(f"{site} holds no built site: run `mkdocs build` first")
    out.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    from qualcl.catalog import GROUPS, entries

    failures = []
    for item in GROUPS:
        dom = _chromium(args.browser, f"{base}/api/{item.key}/", "--dump-dom")
        missing = [e.path for e in entries(item) if f'id="{e.path}"' not in dom]
        print(f"api/{item.key}: {len(entries(item)) - len(missing)}/{len(entries(item))} entries shown")
        failures += [f"api/{item.key}: no entry for {name}" for name in missing]
    # equations typeset offline (MathJax's output in the DOM) on every page whose HTML carries some
    with_math = sorted(p.parent for p in site.rglob("index.html") if 'class="arithmatex"' in p.read_text())
    if not with_math:
        failures.append("no page carries an equation: the arithmatex markup changed?")
    for folder in with_math:
        page = folder.relative_to(site).as_posix() + "/"
        dom = _chromium(args.browser, f"{base}/{page}", "--dump-dom")
        typeset = dom.count('class="MathJax') + dom.count("<mjx-container")
        prose = re.sub(r"<(pre|code)\b.*?</\1>", "", dom, flags=re.S)  # a source listing may quote the role
        print(f"{page}: {typeset} typeset equations, {prose.count(':math:')} literal :math: roles outside code")
        if typeset == 0 or ":math:" in prose:
            failures.append(f"{page}: equations not typeset offline")
    for notebook in sorted((ROOT / "docs" / "recipes").glob("*.py")):
        dom = _chromium(args.browser, f"{base}/recipes/{notebook.stem}/", "--dump-dom")
        images, outputs = dom.count("<img"), dom.count("jp-OutputArea-output")
        print(f"recipes/{notebook.stem}: {outputs} outputs, {images} images")
        if images == 0 or outputs == 0:
            failures.append(f"recipes/{notebook.stem}: no printed output or no plot")
    for result in sorted((ROOT / "docs" / "results").glob("*.md")):
        dom = _chromium(args.browser, f"{base}/results/{result.stem}/", "--dump-dom")
        print(f"results/{result.stem}: {dom.count('<table')} tables")
        if "<table" not in dom:
            failures.append(f"results/{result.stem}: no table")
    for page, height in (("", 1600), ("api/losses/", 2400), ("recipes/fundus_mm/", 4000), ("data/", 2000)):
        name = (page.strip("/").replace("/", "_") or "home") + ".png"
        _chromium(args.browser, f"{base}/{page}", f"--screenshot={out / name}", f"--window-size=1280,{height}")
        print(f"screenshot {out / name}")
    server.shutdown()
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
