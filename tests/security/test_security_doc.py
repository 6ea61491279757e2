"""SECURITY.md and the documentation's security page say the same thing."""

from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_docs_security_page_mirrors_security_md():
    repo = (ROOT / "SECURITY.md").read_text().split("\n## Threat model (one page)\n", 1)[1]
    docs = (ROOT / "docs" / "security.md").read_text().split("\n## Threat model\n", 1)[1]
    assert docs == repo, "copy SECURITY.md into docs/security.md (after its intro)"
    for topic in (
        "conveyor keys revoke",
        ":rotateSecret",
        "CONVEYOR_FLOWER_PASSWORD",
        "CONVEYOR_PAGE_TOKEN_SECRET",
        "client_header_timeout",
    ):
        assert topic in repo, topic
