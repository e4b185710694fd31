"""Headless Chromium for the browser tests (tests/e2e/test_jobs.py, test_report_browser.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def ensure_chromium() -> str:
    """Debian's chromium + chromedriver, installed here when missing (the test setup); skip
    with the reason only if they cannot be installed."""
    driver = shutil.which("chromedriver")
    if driver and shutil.which("chromium"):
        return driver
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and this machine has no apt-get to install it")
    done = subprocess.run(["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        done = subprocess.run("apt-get update -q && apt-get install -y -q chromium "
                              "chromium-driver", shell=True, capture_output=True, text=True,
                              timeout=900)
    driver = shutil.which("chromedriver")
    if done.returncode != 0 or not driver:
        pytest.skip(f"chromium could not be installed: {done.stderr.strip()[-300:]}")
    return driver


def headless_chromium(profile_dir):
    """A selenium driver for Debian's chromium, headless, with its profile in ``profile_dir``."""
    chromedriver = ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                 f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(chromedriver), options=options)
