"""docs/message-types.md is written from the schemas and the rulebook (``sgb policy message-types``):
this fails when the committed page and what the code in force would write differ."""

from __future__ import annotations

from pathlib import Path

from broker.policy import messagetypes
from broker.policy import rulebook as rulebooks
from broker.wire.catalogue import Catalogue

PAGE = Path(__file__).resolve().parent.parent / "docs" / "message-types.md"


def test_the_catalogue_page_is_what_the_schemas_and_the_rulebook_say() -> None:
    catalogue = Catalogue()
    written = messagetypes.render(rulebooks.load(rulebooks.DEFAULT_RULEBOOK, catalogue), catalogue)
    assert PAGE.read_text(encoding="utf-8") == written, (
        "docs/message-types.md is stale: sgb policy message-types --rulebook broker/policy/rulebook.yaml "
        "> docs/message-types.md")


def test_each_type_is_catalogued_with_its_senders_clocks_and_sources() -> None:
    catalogue = Catalogue()
    book = rulebooks.load(rulebooks.DEFAULT_RULEBOOK, catalogue)
    page = messagetypes.render(book, catalogue)
    for name, _ in catalogue.types:
        assert f"\n## {name}\n" in page, name
    for rule in book.rules:
        assert f"Rule `{rule.id}`" in page and rule.cite[0] in page, rule.id
        for spec in rule.deadlines:
            assert f"Clock `{spec.clock}`: {spec.says}" in page, (rule.id, spec.clock)
    # the clocks of a conference outcome, each with its own reply and span
    assert "core-group-meeting owed by the sender, 10 working days" in page
    assert "cp-conference-outcome owed by the sender, 3 months from /heldAt" in page
    assert "health (integrated-care-board only)" in page  # the child death review partner, not any health body
