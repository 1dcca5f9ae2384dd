"""The browser check of the book fails on what a reader should never see: raw markdown table syntax,
warning text, and a wide table cut off at the right edge. Each check is shown to fail on a small page
that has the fault, and to pass on one without it (static pages: no book build needed)."""

import pytest

from browser import browser_available, check_pages

PAGE = """<!DOCTYPE html><html><head><title>{name}</title><style>
body {{ margin: 0; }} article {{ width: 600px; margin-left: 100px; }}
.scroll {{ overflow-x: auto; }}
</style></head><body><main><article>{body}</article><aside>side</aside></main></body></html>"""

WIDE = "<table><tr>" + "".join(f"<td>column&nbsp;number&nbsp;{k}</td>" for k in range(30)) + "</tr></table>"

PAGES = {
    "good": "<h1>A page</h1><p>Text with a | bar.</p><div class='scroll'>" + WIDE + "</div>"
    "<table><tr><td>narrow</td></tr></table><pre>| a | b |\n|---|---|</pre>",
    "raw_table": "<h1>Raw</h1><p>| attributor | case |\n|---|---|\n| TRAK | mnist |</p>",
    "warning": "<h1>Warned</h1><div class='output stderr'><pre>/tmp/x/maestro.py:371: FixtureSizesWarning: "
    "maestro_mt: /tmp/data/fixture_sizes.json scales the setting down</pre></div>",
    "clipped": "<h1>Clipped</h1>" + WIDE,
    "numbered": "<h1>Numbered</h1><figure><img alt=''><figcaption><p><span class='caption-number'>Fig. 6 </span>"
    "<span class='caption-text'>The paper's Fig 2, reproduced.</span></p></figcaption></figure>",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not browser_available():
        pytest.skip("chromium/chromedriver not installed (make test installs them with apt-get when it can)")
    html = tmp_path_factory.mktemp("site")
    for name, body in PAGES.items():
        (html / f"{name}.html").write_text(PAGE.format(name=name, body=body))
    return check_pages(html, list(PAGES), tmp_path_factory.mktemp("shots"))


def found(seen: dict) -> dict[str, list[str]]:
    return {check: seen[check] for check in ("raw_tables", "warnings", "clipped", "numbered") if seen[check]}


def test_a_page_without_faults_passes_every_check(report):
    assert found(report["good"]) == {}


@pytest.mark.parametrize(
    "fault, check",
    [("raw_table", "raw_tables"), ("warning", "warnings"), ("clipped", "clipped"), ("numbered", "numbered")],
)
def test_each_fault_fails_its_check_and_only_its_own(report, fault, check):
    assert list(found(report[fault])) == [check], report[fault]
