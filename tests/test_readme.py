"""The README's models × engines table is the one `ppgen models --markdown` prints today."""

from pathlib import Path

from ppgen.cli import models_table

README = Path(__file__).parent.parent / "README.md"


def test_models_table_in_readme_is_current():
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- models-table:start -->") + len("<!-- models-table:start -->")
    end = text.index("<!-- models-table:end -->")
    assert text[start:end].strip() == models_table(markdown=True).strip(), (
        "README table is stale: regenerate it with `ppgen models --markdown`"
    )
