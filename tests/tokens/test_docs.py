"""The documented vocabulary is the one the code builds."""

from __future__ import annotations

from pathlib import Path

from sm1.tokenizer import vocabulary_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "tokenizer.md"


def test_docs_list_every_id_of_the_vocabulary(tok):
    text = DOC.read_text()
    table = text.split("<!-- vocabulary:start -->\n", 1)[1].split("<!-- vocabulary:end -->", 1)[0]
    assert table == vocabulary_markdown(tok), "regenerate the table with `python -m sm1.tokenizer`"
