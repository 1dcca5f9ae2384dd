"""Open the built book in a real headless browser (Debian's chromium via chromedriver).

Serves ``_build/html`` over HTTP on a free local port, opens each page, waits for it to load,
checks that the page rendered (a title, no server error) and that every image on it finished
loading with a non-zero size, and saves a full-page screenshot. Nothing leaves the machine.

What a reader sees (:data:`READER_CHECKS`, run in the page): markdown table syntax left as raw text
(``| a | b |`` over ``|---|---|``, outside code blocks), warning text (an output on stderr, or
``SomeWarning:`` anywhere in the text), and a table that runs past the right edge of the text column
with no scrolling box around it (cut off or overlapping the margin); and an automatic figure
number ("Fig. 6") shown before a caption, which would clash with the paper's figure names.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_available() -> bool:
    """True when chromium and chromedriver are installed."""
    return bool(shutil.which("chromium") or Path(CHROMIUM).exists()) and Path(CHROMEDRIVER).exists()


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 at a free port; yields the base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


#: JavaScript run in each page; returns ``{raw_tables, warnings, clipped, numbered}``, lists of short descriptions.
READER_CHECKS = r"""
const article = document.querySelector('article') || document.querySelector('main') || document.body;
const copy = article.cloneNode(true);
copy.querySelectorAll('pre, code, .highlight, script, style').forEach(e => e.remove());
const text = copy.textContent;
const raw_tables = [];
const separator = /\|\s*:?-{3,}:?\s*\|/g;
let m;
while ((m = separator.exec(text)) !== null) {
  raw_tables.push(text.slice(Math.max(0, m.index - 80), m.index + 40).replace(/\s+/g, ' '));
}
const warnings = [];
article.querySelectorAll('.stderr, [class*="stderr"]').forEach(e => {
  if (/warn/i.test(e.textContent)) warnings.push('stderr: ' + e.textContent.trim().slice(0, 160));
});
const warned = /\b[A-Z]\w*Warning\b:/g;
while ((m = warned.exec(article.textContent)) !== null) {
  warnings.push(article.textContent.slice(m.index, m.index + 160).replace(/\s+/g, ' '));
}
const clipped = [];
const edge = article.getBoundingClientRect().right;
article.querySelectorAll('table').forEach((table, index) => {
  let scrolls = false;
  for (let e = table; e && e !== article.parentElement; e = e.parentElement) {
    const style = getComputedStyle(e);
    if ((style.overflowX === 'auto' || style.overflowX === 'scroll') && e.getBoundingClientRect().right <= edge + 1) {
      scrolls = true;
      break;
    }
  }
  const right = table.getBoundingClientRect().right;
  if (!scrolls && right > edge + 1) {
    const head = (table.querySelector('tr') || table).textContent.trim().replace(/\s+/g, ' ').slice(0, 60);
    clipped.push(`table ${index} (${head}) ends ${Math.round(right - edge)} px past the text column`);
  }
});
const numbered = [];
article.querySelectorAll('.caption-number').forEach(e => {
  if (e.getClientRects().length && e.textContent.trim()) numbered.push(e.textContent.trim());
});
return {raw_tables: raw_tables, warnings: warnings, clipped: clipped, numbered: numbered};
"""


def check_pages(html: Path, pages: list[str], screenshots: Path) -> dict[str, dict]:
    """Open every page (path relative to ``html``, without ``.html``); returns per page its title,
    the number of images, the images that failed to load, the screenshot file, and what
    :data:`READER_CHECKS` found (``raw_tables``, ``warnings``, ``clipped``, ``numbered``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    screenshots.mkdir(parents=True, exist_ok=True)
    report = {}
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        with serve(html) as base:
            for page in pages:
                driver.get(f"{base}/{page}.html")
                driver.execute_async_script(
                    "const done = arguments[arguments.length - 1];"
                    "Promise.all(Array.from(document.images).map(i => i.complete ? null :"
                    " new Promise(r => { i.onload = i.onerror = r; }))).then(() => done());"
                )
                images = driver.execute_script(
                    "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);"
                )
                seen = driver.execute_script(READER_CHECKS)
                shot = screenshots / f"{page.replace('/', '__')}.png"
                height = driver.execute_script("return document.body.scrollHeight")
                driver.set_window_size(1280, min(max(int(height), 800), 12000))
                driver.save_screenshot(str(shot))
                driver.set_window_size(1280, 1000)
                report[page] = {
                    "title": driver.title,
                    "images": [src for src, _ in images],
                    "broken": [src for src, ok in images if not ok],
                    "screenshot": shot,
                    "error": "404" in driver.title or "Error response" in driver.page_source[:500],
                    **seen,
                }
    finally:
        driver.quit()
    return report
