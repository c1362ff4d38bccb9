"""The book builds at ``smoke`` parameters: every page, no error output, offline math.

Uses the session's ``built_book`` fixture (``conftest.py``), which the browser test
shares.
"""
from __future__ import annotations

import html as html_lib
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from kneelib.runner import _format_number, toc_notebooks, toc_pages

pytestmark = pytest.mark.book

CDN_PATTERN = re.compile(r"""<(?:script|link)\b[^>]*(?:src|href)=["'](?:https?:)?//""", re.I)


def _visible_text(page_html: str) -> str:
    """Page text without tags, entities resolved, typographic quotes made plain."""
    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", page_html))
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", text)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_every_toc_page_is_built(built_book):
    html = built_book.parent
    book = html.parent.parent
    pages = toc_pages(book / "_toc.yml")
    assert pages[0] == "intro"
    missing = [p for p in pages if not (html / f"{p}.html").is_file()]
    assert missing == [], f"pages of _toc.yml without HTML: {missing}"
    assert built_book.name == "index.html" and built_book.is_file()


def test_executed_chapters_have_no_errors(built_book):
    book = built_book.parent.parent.parent
    for name in toc_notebooks(book / "_toc.yml"):
        nb = nbformat.read(book / "_executed" / f"{name}.ipynb", as_version=4)
        errors = [(o.get("ename"), o.get("evalue")) for c in nb.cells
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert errors == [], f"chapter {name}: error outputs {errors}"
        stderr = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                         if o.get("output_type") == "stream" and o.get("name") == "stderr")
        assert "Traceback (most recent call last)" not in stderr, f"chapter {name}: traceback"
        html = (built_book.parent / "_executed" / f"{name}.html").read_text()
        assert "Traceback (most recent call last)" not in html, f"{name}.html shows a traceback"
        assert 'class="output traceback' not in html, f"{name}.html shows an error output"


def test_pages_load_nothing_from_a_cdn_and_serve_mathjax_themselves(built_book):
    html = built_book.parent
    offenders = {}
    for page in html.rglob("*.html"):
        text = page.read_text()
        hits = CDN_PATTERN.findall(text)
        if hits:
            offenders[str(page.relative_to(html))] = hits
        assert "cdn.jsdelivr.net/npm/mathjax" not in text and "cdnjs.cloudflare.com" not in text
    assert offenders == {}, f"pages load resources from the network: {offenders}"
    chapter = (html / "_executed" / "cohort.html").read_text()
    assert 'src="../_static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"' in chapter
    assert (html / "_static" / "mathjax" / "MathJax.js").is_file()
    assert (html / "_static" / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()


def test_status_page_lists_every_study_with_published_and_reproduced(built_book):
    html = built_book.parent
    book = html.parent.parent
    status_html = (html / "status.html").read_text()
    # the page body only: the "on this page" navigation repeats the chapter headings
    article = re.search(r'<article class="bd-article">(.*?)</article>', status_html, re.S)
    status = _visible_text(article.group(1) if article else status_html)
    studies = yaml.safe_load((book / "published.yml").read_text())["studies"]
    for study in studies:
        assert study["title"] in status, f"status page lacks study {study['key']}"
    metrics = {p.name.removesuffix(".metrics.json"): json.loads(p.read_text())
               for p in (book / "_executed").glob("*.metrics.json")}
    assert "cohort" in metrics, "the cohort chapter saved no metrics"
    for name, payload in metrics.items():
        assert f"Chapter {name}" in status, f"status page lacks chapter {name}"
        # two chapters may share a quantity's name: look for it inside this chapter's section
        section = status[status.index(f"Chapter {name}"):]
        for comparison in payload["comparisons"]:
            assert _normalise(comparison["quantity"]) in section, comparison["quantity"]
            row = section[section.index(_normalise(comparison["quantity"])):][:400]
            for key in ("published", "reproduced"):
                if comparison[key] is not None:
                    assert _format_number(comparison[key]) in row, (key, comparison, row)
    # not-yet-reproduced studies still show their headline published numbers
    for study in studies:
        if not any(nb in metrics for nb in study["notebooks"]):
            assert "not yet reproduced" in status.lower()
            for item in study["headline"]:
                assert _normalise(item["quantity"]) in status, item["quantity"]


def test_pages_wrap_long_table_cells_and_code(built_book):
    """The status page's note column and long code lines wrap instead of being clipped."""
    html_dir = built_book.parent
    css = html_dir / "_static" / "kneelib.css"
    assert css.is_file(), "book/_css/kneelib.css was not copied into the build"
    rules = css.read_text()
    assert "white-space: normal" in rules and "pre-wrap" in rules
    status = (html_dir / "status.html").read_text()
    assert "_static/kneelib.css" in status, "status page does not load kneelib.css"
