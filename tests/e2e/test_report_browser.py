"""The evaluation report's HTML opened from disk in a real headless Chromium: the page a person
gets by double-clicking report.html, with every figure embedded and loaded."""

from __future__ import annotations


import pytest

from culture_rl.eval.report import write_report
from tests.support.browser import headless_chromium
from tests.support.report_fixture import FIGURES, build_run

pytestmark = pytest.mark.e2e

HEADINGS = ["Summary", "Associations (P@k)", "Lexical norms", "World Values Survey",
            "High-tension items", "Value classification", "Ranking reward", "Training curves",
            "Provenance"]


def test_report_renders_with_every_section_and_figure(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = write_report(build_run(tmp_path / "run"))["html"]
    driver = headless_chromium(tmp_path / "profile")
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        assert driver.title == "Evaluation report: quickstart"
        assert [h.text for h in driver.find_elements(By.TAG_NAME, "h2")] == HEADINGS
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == FIGURES
        for image in images:
            assert driver.execute_script("return arguments[0].complete", image)
            assert driver.execute_script("return arguments[0].naturalWidth", image) > 0
            # Scaled to the page: no figure wider than the text column.
            assert image.size["width"] <= 1100, image.get_attribute("alt")
        summary = driver.find_element(By.TAG_NAME, "table")  # the first: the summary
        ppo = summary.find_element(By.XPATH, ".//tr[td[1]='ppo']")
        assert [b.text for b in ppo.find_elements(By.TAG_NAME, "strong")] == [
            "0.620", "0.110", "0.480"]  # Borenia p@5, JS, rho
        assert ppo.find_element(By.TAG_NAME, "strong").value_of_css_property(
            "font-weight") in ("700", "bold")
        config = driver.find_element(By.TAG_NAME, "details")
        assert not config.find_element(By.TAG_NAME, "pre").is_displayed()  # folded
        config.find_element(By.TAG_NAME, "summary").click()
        assert "name: quickstart" in config.find_element(By.TAG_NAME, "pre").text
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(height + 150, 16000))
        assert driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
