"""Find or install the headless browser the dashboard's tests drive.

Chromium and its WebDriver come from the system's packages (Debian: ``chromium`` and
``chromium-driver``). Found on PATH: done. Missing, with apt-get and root: installed.
Under CI=true a browser that cannot be had is an error; elsewhere the browser tests
are skipped (and say so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from services import missing_service  # scripts/, on the path when run as a script

PACKAGES = ["chromium", "chromium-driver"]


def found() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def install() -> bool:
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return False
    print(f"browser: installing {' '.join(PACKAGES)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
            return False
    return found() is not None


def main() -> int:
    paths = found()
    if paths is None and install():
        paths = found()
    if paths is not None:
        print(f"browser: {paths[0]} with {paths[1]}")
        return 0
    return missing_service(
        "browser: chromium and chromedriver are missing and could not be installed "
        f"(install the packages {' '.join(PACKAGES)})", "the browser tests will be skipped")


if __name__ == "__main__":
    sys.exit(main())
