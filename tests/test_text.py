import numpy as np
import pandas as pd
import pytest

from lmrec.data.text import render_text, template_fields
from lmrec.errors import DataError, LmrecError

TEMPLATE = "{title}. {categories}. {brand}."


def _items(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_template_fields_in_order():
    assert template_fields(TEMPLATE) == ["title", "categories", "brand"]
    assert template_fields("{{literal}} {title}") == ["title"]


def test_render_full_row():
    items = _items(title=["Cordless Drill"], categories=[["Tools", "Power Tools"]], brand=["Voltix"])
    assert render_text(items, TEMPLATE).tolist() == ["Cordless Drill. Tools, Power Tools. Voltix."]


@pytest.mark.parametrize(
    "title, categories, brand, expected",
    [
        ("Drill", ["Tools"], "", "Drill. Tools."),  # missing brand drops its separator
        ("Drill", [], "Voltix", "Drill. Voltix."),  # missing middle field
        ("", ["Tools"], "Voltix", "Tools. Voltix."),  # missing first field: no leading ". "
        ("Drill", None, None, "Drill."),
        (float("nan"), np.nan, pd.NA, ""),  # nothing to say: empty text, not "."
    ],
)
def test_render_drops_empty_fields(title, categories, brand, expected):
    items = _items(title=[title], categories=[categories], brand=[brand])
    assert render_text(items, TEMPLATE).tolist() == [expected]


def test_render_normalises_values():
    items = _items(
        title=["  Oak \n Board  "],
        tags=[np.array(["wood", "", "kitchen"], dtype=object)],  # arrays, as parquet list columns arrive
        year=[1995.0],  # an integer year in a float column (the column has gaps)
    )
    assert render_text(items, "{title} ({year}): {tags}").tolist() == ["Oak Board (1995): wood, kitchen"]


def test_render_keeps_index():
    items = _items(title=["a", "b"]).set_axis([10, 20])
    assert render_text(items, "{title}").index.tolist() == [10, 20]


def test_unknown_field_names_it_and_lists_available():
    items = _items(item_id=["x"], title=["Drill"], text=["old"])
    with pytest.raises(DataError) as exc:
        render_text(items, "{title}. {plot}", source="items.csv")
    msg = str(exc.value)
    assert "items.csv" in msg and "'plot'" in msg and "'title'" in msg and "'text'" not in msg
    assert isinstance(exc.value, LmrecError)


@pytest.mark.parametrize(
    "template", ["{title", "{title!r}", "{title:>10}", "{0}", "{a.b}", "no fields at all", "{}"]
)
def test_malformed_templates(template):
    with pytest.raises(DataError, match="template"):
        template_fields(template)
