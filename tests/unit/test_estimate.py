"""Seed 002's cost arithmetic, as the seed works it: $0.005/GB-month, each GB stored eight times
(a full every 3 months kept 2 years), two test downloads a year at $0.05/GB."""

from __future__ import annotations

import pytest

from recipes import estimate


def test_the_seeds_worked_example() -> None:
    prices = estimate.Prices()
    kept = estimate.copies("2Y", "3M")
    assert kept == 8
    assert estimate.yearly_cost(1, kept, prices) == pytest.approx(0.58)
    assert estimate.yearly_cost(10, kept, prices) == pytest.approx(5.80)
    assert estimate.yearly_cost(30, kept, prices) == pytest.approx(17.40)


def test_retention_shorter_than_a_full_keeps_one() -> None:
    assert estimate.copies("1M", "3M") == 1
    assert estimate.copies("1Y", "1M") == 12  # 365 days / 30, to the nearest


def test_an_estimate_adds_compressed_files_and_dumps_per_full() -> None:
    e = estimate.Estimate(
        raw=10 * estimate.GB, ratio=0.5, sampled=1, dumps=estimate.GB, copies=8, prices=estimate.Prices()
    )
    assert e.per_full == 6 * estimate.GB and e.stored == 48 * estimate.GB
    assert e.cost == pytest.approx(6 * 0.58)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "abc"])
@pytest.mark.parametrize("option", ["--price-gb-month", "--price-gb-download", "--downloads-per-year"])
def test_prices_and_counts_are_finite_numbers_at_least_zero(option: str, value: str) -> None:
    """``nan`` would make every figure meaningless (and ``--json`` print ``NaN``, not JSON):
    refused in one line, exit 2, before the host is reached."""
    from click.testing import CliRunner

    from recipes import cli

    result = CliRunner().invoke(cli.main, ["estimate", "django", "--host", "local", f"{option}={value}"])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
