"""Screenshots of the page at ``/`` for the README, from a running service: docs/page.png (a sample
classified) and docs/page-depths.png (the "all depths" view), in Debian's headless Chromium.

    make serve                                       # in another shell: all nine models
    .venv/bin/python -m bench.page_screenshots --url http://127.0.0.1:3000
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.cli import OneLineParser, run_cli
from common.errors import UserError

CHROMIUM = "/usr/bin/chromium"  # Debian's package (make bootstrap installs it); Playwright downloads nothing
DOCS = Path(__file__).resolve().parents[1] / "docs"


def screenshots(url: str, out: Path = DOCS, sample: str = "Ankle boot") -> list[Path]:
    """Classifies ``sample`` with the default model, then sends it to every model; returns the files."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        raise UserError(f"{CHROMIUM} not found: 'make bootstrap' (or 'apt-get install chromium') installs it")
    page_png, depths_png = out / "page.png", out / "page-depths.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1200, "height": 860})
        page.goto(url)
        page.get_by_role("button", name=sample, exact=True).click()
        page.locator("#predictions li").first.wait_for()
        page.screenshot(path=page_png)
        page.get_by_role("button", name="All depths").click()
        page.locator("#depths").wait_for()
        page.locator("#depths").screenshot(path=depths_png)
        browser.close()
    return [page_png, depths_png]


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = OneLineParser(prog="python -m bench.page_screenshots", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the service (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for the PNGs (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in screenshots(args.url, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
