"""Humanised numbers: what a narrow cell says must still be the number, to the digits that matter."""

import pytest

from tcptop.frontends.screen.units import fmt_pct


@pytest.mark.parametrize("pct, shown", [
    (None, "-"), (float("nan"), "-"), (0, "0 %"), (0.0042, "<0.01 %"), (0.042, "0.042 %"), (0.42, "0.42 %"),
    (0.999, "1 %"), (4.2, "4.2 %"), (42.4, "42 %"), (107.8, "108 %"),
])
def test_a_share_keeps_the_digits_it_needs(pct, shown):
    assert fmt_pct(pct) == shown
