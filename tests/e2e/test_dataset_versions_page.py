"""The dashboard's dataset page in a real browser against the live service: a dataset of given splits
shows its images per split and class; a version made from the page's move/remove form opens, names its
parent and its change, and the parent lists it."""

from __future__ import annotations

import io
import json
import re
import zipfile

import httpx
import pytest

from tests.e2e.test_dashboard import browser, wait_ready  # noqa: F401  (the browser fixture)
from tests.helpers import make_image_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LAYOUT = {"train": {"blue": 3, "red": 3}, "val": {"blue": 2, "red": 2}, "test": {"blue": 1, "red": 2}}


def split_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split, classes in LAYOUT.items():
            for index, (colour, count) in enumerate(classes.items()):
                for n in range(count):
                    archive.writestr(f"{split}/{colour}/{colour}_{n}.png", make_image_bytes(colour, 24, seed=index + n))
    return buffer.getvalue()


def test_the_dataset_page_shows_splits_and_makes_a_version(live_service, browser):  # noqa: F811
    from playwright.sync_api import expect

    base = live_service.url.rstrip("/")
    with httpx.Client(base_url=base, timeout=60) as client:
        response = client.post("/datasets", files={"file": ("splits.zip", split_archive(), "application/zip")})
        assert response.status_code == 201, response.text
        dataset_id = response.json()["id"]
    page = browser.new_page()
    try:
        page.goto(f"{base}/#/datasets/{dataset_id}")
        wait_ready(page, f"/datasets/{dataset_id}")
        rows = page.get_by_test_id("splits-table").locator("tbody tr")
        expect(rows).to_have_count(3)
        expect(rows.nth(0)).to_contain_text("blue")
        cells = [rows.nth(1).locator("td").nth(i).inner_text().strip() for i in range(1, 4)]
        assert cells == ["3", "2", "2"]  # red in train, validation, test
        expect(page.get_by_test_id("dataset-children")).to_have_text("none")

        page.fill("#version-edits", json.dumps({"move": [{"path": "train/red/red_0.png", "to": "blue"}]}))
        page.get_by_test_id("version-create").click()
        expect(page).to_have_url(re.compile(r"#/datasets/(?!" + dataset_id + r")[^/?]+$"), timeout=60_000)
        version_id = page.url.rsplit("/", 1)[1]
        wait_ready(page, f"/datasets/{version_id}")
        expect(page.get_by_test_id("dataset-parent")).to_have_text(dataset_id)
        expect(page.get_by_test_id("dataset-change")).to_have_text("0 added, 1 moved, 0 removed")
        train_cells = page.get_by_test_id("splits-table").locator("tbody tr").nth(0).locator("td")
        expect(train_cells.nth(1)).to_have_text("4")  # blue in train: 3 + the moved one

        page.fill("#version-edits", json.dumps({"remove": ["../escape.png"]}))
        page.get_by_test_id("version-create").click()
        expect(page.get_by_test_id("version-error")).to_contain_text("'../escape.png'")

        page.goto(f"{base}/#/datasets/{dataset_id}")
        wait_ready(page, f"/datasets/{dataset_id}")
        expect(page.get_by_test_id("dataset-child")).to_have_text(version_id)
    finally:
        page.close()
