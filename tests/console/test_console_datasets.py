"""Console, Datasets page: schema, imports with counts and the errors download, and the record
browser with an AIP-160 filter and paging."""

from __future__ import annotations

import io
from typing import Any

import pytest

from tests.console.conftest import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_browse_records_with_a_filter_and_pages(browser: Any, console: Any) -> None:
    cv = console.client()
    ds = cv.datasets.create(
        "orders",
        [
            {"name": "id", "type": "string", "required": True},
            {"name": "amount", "type": "number"},
            {"name": "country", "type": "enum", "values": ["DE", "FR"]},
        ],
        key_field="id",
    )
    rows = "".join(f"o{i:02d},{i * 10},{'DE' if i % 2 else 'FR'}\n" for i in range(50))
    csv = "id,amount,country\n" + rows + "bad,lots,DE\n"
    assert cv.imports.create(ds.name, io.BytesIO(csv.encode())).wait(timeout=60).done

    page = sign_in(browser, console)
    page.goto(console.url + "/console/datasets")
    page.click(f"text={ds.display_name}")
    assert page.locator("#schema tbody tr").count() == 3
    imports = page.locator("#imports tbody tr")
    assert imports.count() == 1
    assert [c.strip() for c in imports.first.locator("td").all_inner_texts()][1:5] == [
        "SUCCEEDED",
        "51",
        "50",
        "1",
    ]
    with page.expect_download() as download:
        page.click("#imports a.errors")
    assert "lots" in open(download.value.path()).read()

    def keys() -> list[str]:
        return page.locator("#records tbody tr").evaluate_all("rs => rs.map(r => r.dataset.key)")

    page.fill("#record-filter input[name=filter]", 'amount >= 200 AND country = "DE"')
    page.click("#record-filter button")
    page.wait_for_selector("#records")
    assert keys() == [f"o{i:02d}" for i in range(20, 50) if i % 2]  # 15: one page
    assert page.locator("#next").count() == 0
    page.fill("#record-filter input[name=filter]", "amount >= 100")  # 40 records: two pages
    page.click("#record-filter button")
    first = keys()
    page.click("#next")
    second = keys()
    assert len(first) == len(second) == 20
    assert sorted(first + second) == [f"o{i:02d}" for i in range(10, 50)]
    assert page.locator("#next").count() == 0
    console.shot(page, "dataset")

    page.fill("#record-filter input[name=filter]", "amount >")
    page.click("#record-filter button")
    assert "filter" in page.locator("#filter-error").inner_text().lower()
    page.goto(console.url + "/console/datasets")
    console.shot(page, "datasets")
    page.context.close()
