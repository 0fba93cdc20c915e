"""``recipes estimate``: what a recipe would store and what that costs a year, seed 002's way.

The host is measured, not guessed: GNU tar writing to /dev/null gives the exact size of a full
archive without reading file data, and the first ``SAMPLE`` bytes of the archive go through
``zstd -1`` for the compression ratio. Dumps are sized from the latest snapshot when there is
one. The cost model is the seed's: each full is kept ``max_age / full_every`` times (2Y / 3M =
8), storage is priced per GB-month, and each test download of the data is priced per GB.
"""

from __future__ import annotations

import attrs

from recipes import chain
from recipes import manifest as mf
from recipes.errors import StepFailed
from recipes.hosts import Host, key_values, last_line, run
from recipes.plan import Plan
from recipes.steps import Archive

SAMPLE = 64 << 20
GB = 10**9


@attrs.frozen
class Prices:
    """Prices per decimal GB (the seed's Backblaze B2 figures are the defaults)."""

    gb_month: float = 0.005
    gb_download: float = 0.05
    downloads_per_year: float = 2


@attrs.frozen
class Estimate:
    """Measured sizes and the yearly cost under the retention."""

    raw: int
    """Bytes a full archive would be (excludes applied)."""
    ratio: float
    """zstd -1 size / raw size of the sample (1.0 when the host has no zstd)."""
    sampled: int
    dumps: int
    """Stored bytes of the dumps in the latest snapshot (0 when there is none)."""
    copies: int
    """Fulls kept at once: ``max_age / full_every`` (2Y / 3M = 8)."""
    prices: Prices

    @property
    def per_full(self) -> int:
        return int(self.raw * self.ratio) + self.dumps

    @property
    def stored(self) -> int:
        return self.per_full * self.copies

    @property
    def cost(self) -> float:
        return yearly_cost(self.per_full / GB, self.copies, self.prices)


def yearly_cost(gb: float, copies: int, prices: Prices) -> float:
    """Seed 002: ``gb`` of data stored ``copies`` times at ``gb_month`` for 12 months, plus
    ``downloads_per_year`` test downloads of it ($0.005, 8 copies, 2 downloads: $0.58 per GB)."""
    return gb * copies * prices.gb_month * 12 + gb * prices.downloads_per_year * prices.gb_download


def copies(max_age: str, full_every: str) -> int:
    """How many fulls retention keeps at once, to the nearest whole one (duply's units make 2Y
    730 days and 3M 90, so 8.1: the seed's 8)."""
    return max(1, round(chain.parse_duration(max_age) / chain.parse_duration(full_every)))


def measure(host: Host, plan: Plan, latest: mf.Manifest | None, kept: int, prices: Prices) -> Estimate:
    """Run the measuring commands on the host (they read at most ``SAMPLE`` bytes of data)."""
    raw = sampled = compressed = 0
    for step in plan.steps:
        if not isinstance(step, Archive):
            continue
        result = run(host, step.measure_command(SAMPLE))
        facts = key_values(result.stdout)
        if not facts.get("raw", "").isdigit():
            raise StepFailed(
                f"could not measure {step.root} on {host.name} (exit {result.exit_status}): "
                f"{last_line(result.stderr)}"
            )
        raw += int(facts["raw"])
        sample = int(facts.get("sample") or 0)
        sampled += sample
        compressed += int(facts["zstd"]) if facts.get("zstd", "").isdigit() else sample
    ratio = compressed / sampled if sampled else 1.0
    dumps = sum(o.size for o in latest.objects if o.kind == "dump") if latest else 0
    return Estimate(raw, ratio, sampled, dumps, kept, prices)
