"""A real browser visit, run inside the client's namespace: open the site, post through
the form, wait for the post and the serving nodes to show, save a screenshot.

    python -m tests.e2e.browser URL SCREENSHOT     prints JSON of what the page showed"""

from __future__ import annotations

import json
import sys

from playwright.sync_api import sync_playwright

# Without these Chromium reaches for Google's services, which this machine cannot reach.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main(url: str, screenshot: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(ignore_https_errors=True, viewport={"width": 1100, "height": 900})
        # what the page's Content-Security-Policy blocked, or any other script error; a
        # failed load is reported by its address instead (the browser asks for a favicon
        # the site does not have)
        errors: list[str] = []
        page.on(
            "console",
            lambda message: (
                message.type == "error"
                and not message.text.startswith("Failed to load resource")
                and errors.append(message.text)
            ),
        )
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on(
            "response",
            lambda response: (
                response.status >= 400
                and not response.url.endswith("/favicon.ico")
                and errors.append(f"{response.status} {response.url}")
            ),
        )
        page.goto(url)
        page.fill("input[name=author]", "Grace")
        page.fill("input[name=title]", "Hello from a real browser")
        page.fill("textarea[name=body]", "Posted through the form, read back at once.")
        page.click("#compose button[type=submit]")
        page.wait_for_selector("#posts li.post h3:text('Hello from a real browser')", timeout=15000)
        rows = page.eval_on_selector_all(
            "#served tr", "rows => rows.map(r => [...r.children].map(c => c.textContent))"
        )
        page.screenshot(path=screenshot, full_page=True)
        result = {"title": page.title(), "url": page.url, "served": rows, "errors": errors}
        print(json.dumps(result))
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
