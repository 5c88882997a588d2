"""The dashboard's timeline as the README shows it: docs/img/timeline.png.

Runs a checkout that retries through the broker and is rolled back, serves the
dashboard over it and photographs the execution's page in headless Chromium.
Run: .venv/bin/python scripts/screenshot.py
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import uvicorn
from selenium import webdriver

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kompensa_workers import MemoryStore  # noqa: E402
from kompensa_workers.ops.web import create_app  # noqa: E402
from tests.web_journal import showcase  # noqa: E402

PORT = 8791


def main() -> int:
    store = MemoryStore()
    key = showcase(store)
    server = uvicorn.Server(uvicorn.Config(create_app(store, token="x"), host="127.0.0.1",
                                           port=PORT, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--window-size=1060,860", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(shutil.which("chromedriver") or "chromedriver"),
        options=options)
    try:
        driver.get(f"http://127.0.0.1:{PORT}/executions/{quote(key, safe='')}")
        target = ROOT / "docs" / "img" / "timeline.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(target))
        print(f"wrote {target.relative_to(ROOT)}")
    finally:
        driver.quit()
        server.should_exit = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
