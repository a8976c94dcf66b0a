"""The documentation site builds with `mkdocs build --strict`, renders its math and pictures
in a real browser, and has no dead internal link.

The site is built once into a temporary folder. Then:
- every href and src of every page that points inside the site is checked to exist, anchors
  included, and no page loads a script, style sheet or picture from another host (the site
  must render offline: KaTeX is served from docs/assets/katex);
- headless chromium opens every page through a local HTTP server, inside a small harness page
  that waits for each page's scripts and counts, in the live DOM, the math that KaTeX rendered
  (and any it could not), and every picture that did not load or decode.
Needs the `docs` extra (mkdocs, mkdocs-material, mkdocstrings); the browser part needs Debian's
chromium (.ci/run installs it where it can) and is skipped without it.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("material", reason="mkdocs-material is not installed")
pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", **os.environ},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


class Links(HTMLParser):
    """Every link and source of a page, and the ids that anchors may point at."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for key in ("href", "src"):
            if attrs.get(key):
                self.refs.append((tag, key, attrs[key]))


def pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def parse(page: Path) -> Links:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_the_site_has_every_section(site):
    for path in (
        "index.html",
        "getting-started.html",
        "derivation.html",
        "rules/index.html",
        "rules/fa.html",
        "comparing-and-tuning.html",
        "conv-and-capsules.html",
        "gans.html",
        "speed-and-gpu.html",
        "reliability.html",
        "results.html",
        "writing-a-rule.html",
        "writing-a-kind.html",
        "layout.html",
        "tutorials/write-a-rule.html",
        "tutorials/own-network.html",
        "reference/cli.html",
        "api/network.html",
    ):
        assert (site / path).is_file(), path


def test_the_command_line_reference_comes_from_the_parser(site):
    from creditlab.cli import build_parser

    text = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    for action in build_parser()._subparsers._group_actions[0].choices:
        assert f"creditlab {action}" in text, action
    for option in ("--rule-opt", "--train-subset", "--matmul-precision", "--grace-epochs"):
        assert option in text, option


def test_no_internal_link_is_dead_and_nothing_comes_from_another_host(site):
    ids = {page: parse(page).ids for page in pages(site)}
    dead, external = [], []
    for page in pages(site):
        for tag, key, value in parse(page).refs:
            url = urlsplit(value)
            if url.scheme in ("http", "https") or value.startswith("//"):
                # A link out is fine; a resource loaded from outside would break offline use.
                if tag in ("script", "img", "link", "iframe") and not (
                    tag == "link" and key == "href" and "stylesheet" not in value
                ):
                    external.append(f"{page.relative_to(site)}: <{tag} {key}={value}>")
                continue
            if url.scheme in ("mailto", "data", "javascript"):
                continue
            if not url.path:
                target = page
            elif url.path.startswith("/"):  # 404.html links from the site's root
                target = (site / unquote(url.path).lstrip("/")).resolve()
            else:
                target = (page.parent / unquote(url.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                dead.append(f"{page.relative_to(site)}: {value}")
            elif url.fragment and target.suffix == ".html":
                known = ids.get(target) or parse(target).ids
                if unquote(url.fragment) not in known:
                    dead.append(f"{page.relative_to(site)}: {value} (no such anchor)")
    assert not dead, "dead links:\n" + "\n".join(dead[:50])
    assert not external, "loaded from another host:\n" + "\n".join(external[:50])


def test_math_is_left_for_katex_served_by_the_site(site):
    text = (site / "tutorials" / "write-a-rule.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in text
    assert "assets/katex/katex.min.js" in text
    css = (site / "assets" / "katex" / "katex.min.css").read_text(encoding="utf-8")
    for font in re.findall(r"url\(([^)]+)\)", css):
        assert (site / "assets" / "katex" / font).is_file(), font


HARNESS = """<!doctype html><meta charset="utf-8"><body><iframe id="f" width="1200"
height="900"></iframe><pre id="report"></pre><script>
const pages = %s;
const frame = document.getElementById("f");
const report = [];
function check(doc) {
  const images = [...doc.images];
  return {
    arithmatex: doc.querySelectorAll(".arithmatex").length,
    katex: doc.querySelectorAll(".arithmatex .katex").length,
    katex_errors: doc.querySelectorAll(".katex-error").length,
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
  };
}
function next(i) {
  if (i >= pages.length) {
    document.getElementById("report").textContent = JSON.stringify(report);
    return;
  }
  frame.onload = () => setTimeout(() => {
    report.push({page: pages[i], ...check(frame.contentDocument)});
    next(i + 1);
  }, 300);
  frame.src = pages[i];
}
next(0);
</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium not installed")
def test_every_page_renders_its_math_and_pictures_in_chromium(site):
    names = [p.relative_to(site).as_posix() for p in pages(site)]
    (site / "_harness.html").write_text(HARNESS % json.dumps(names), encoding="utf-8")
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as profile:
            done = subprocess.run(
                [
                    "chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    f"--user-data-dir={profile}",
                    "--virtual-time-budget=120000",  # let every page load and run its scripts
                    "--dump-dom",
                    f"http://127.0.0.1:{server.server_port}/_harness.html",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="report">(.*?)</pre>', done.stdout, re.S)
    assert found and found.group(1), "the harness did not finish: " + done.stdout[-2000:]
    report = json.loads(html.unescape(found.group(1)))
    assert len(report) == len(names)
    with_math = [r for r in report if r["arithmatex"]]
    assert len(with_math) >= 5, "expected math on the rule pages and the tutorials"
    for r in report:
        assert r["katex"] == r["arithmatex"], f"{r['page']}: math not rendered: {r}"
        assert r["katex_errors"] == 0, f"{r['page']}: KaTeX could not parse some math"
        assert not r["broken"], f"{r['page']}: pictures that did not load: {r['broken']}"
    assert sum(r["images"] for r in report) >= 10, "the results' pictures are missing"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request log in the test output
        pass
