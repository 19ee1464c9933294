import re

import pytest

from pml_hyper.utils.registry import lookup


def test_lookup_returns_the_entry():
    assert lookup({"a": 1, "b": 2}, "b", "letter") == 2


@pytest.mark.parametrize("name", ["c", None, ["a"]])
def test_unknown_name_lists_the_choices(name):
    message = f"unknown letter {name!r}; choose from a, b"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        lookup({"a": 1, "b": 2}, name, "letter")
