"""Rendering after %load_ext: hex pointers in our frames, pandas' own HTML for every other."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture
def html(ip):
    """The text/html formatter switched on, as in a notebook kernel (a terminal has it off)."""
    fmt = ip.display_formatter.formatters["text/html"]
    saved = fmt.enabled
    fmt.enabled = True
    yield fmt
    fmt.enabled = saved


def test_plain_frame_keeps_its_html_table(ip, html):
    ip.run_cell("import pandas as pd\nplain = pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    plain = ip.user_ns["plain"]
    out = html(plain)
    assert out is not None, "a plain DataFrame lost its HTML table after %load_ext stapmagic"
    assert out == plain._repr_html_()


def test_frame_with_unrelated_attrs_keeps_its_html(html):
    df = pd.DataFrame({"latency_ns": [1, 2, 3]})
    df.attrs["note"] = "not a probe run"
    assert "<table" in (html(df) or "")
