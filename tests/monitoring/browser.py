"""The status page in a real browser (Debian's chromium through playwright), driven by
the test over stdin/stdout, one JSON line each way:

    python -m tests.monitoring.browser URL SCREENSHOT

It opens the page and waits until every node is drawn and up, prints the nodes' health
and saves SCREENSHOT; then, for each line `NODE HEALTH` it reads, waits until that node
shows that health and prints how many seconds it took (screenshot saved again, so the
last one shows the last state asked for)."""

from __future__ import annotations

import json
import sys
import time

from playwright.sync_api import Page, sync_playwright

from tests.e2e.browser import FLAGS

NODES = "#topology g.node"


def healths(page: Page) -> dict[str, str]:
    found: dict[str, str] = page.eval_on_selector_all(
        NODES,
        "nodes => Object.fromEntries(nodes.map(n => [n.dataset.node, n.dataset.health]))",
    )
    return found


def main(url: str, screenshot: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1120, "height": 760})
        page.goto(url)
        page.wait_for_function(
            f"""() => {{
                const nodes = [...document.querySelectorAll('{NODES}')];
                return nodes.length > 0 && nodes.every(n => n.dataset.health === 'up');
            }}""",
            timeout=30000,
        )
        page.screenshot(path=screenshot, full_page=True)
        print(json.dumps({"nodes": healths(page), "title": page.title()}), flush=True)
        for line in sys.stdin:
            node, health = line.split()
            started = time.monotonic()
            page.wait_for_selector(
                f'{NODES}[data-node="{node}"][data-health="{health}"]', timeout=30000
            )
            seconds = time.monotonic() - started
            page.screenshot(path=screenshot, full_page=True)
            print(
                json.dumps({"node": node, "seconds": seconds, "nodes": healths(page)}), flush=True
            )
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
