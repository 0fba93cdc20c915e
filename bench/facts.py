#!/usr/bin/env python3
"""Throughput of the facts taps against ``hashlib.sha256`` over the same bytes, fed the same way.

Run it with the project's interpreter (``.venv/bin/python bench/facts.py [--mb 200]``). It makes
~200 MB of pg_dump COPY data, ~200 MB of tar (small and large files, made with tarfile), 50 MB of
tar of small files only, and 50 MB of mysqldump INSERTs, feeds each in 1 MiB chunks (the backup
stream's chunk size), and prints MB/s and the ratio to sha256 (which every backup already pays
for its stored objects). A ratio below 1 means the tap is slower than sha256. No assertions:
a figure to watch, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import tarfile
import time
from collections.abc import Callable, Iterator

from recipes.facts import RowCounter, TarFacts

CHUNK = 1 << 20
MB = 1_000_000


def copy_data(target: int, rnd: random.Random) -> bytes:
    """A pg_dump script: a few COPY blocks of rows with text, numbers, NULLs and escapes."""
    words = [
        b"alpha",
        b"beta",
        b"gamma\\tdelta",
        b"\\N",
        b"back\\\\slash",
        b"x" * 40,
        b"2024-05-01 12:00:00+00",
    ]
    rows = [
        b"%d\t%s\t%s\t%d\n" % (i, rnd.choice(words), rnd.choice(words), rnd.randrange(1 << 30))
        for i in range(5000)
    ]
    block = b"".join(rows)
    out = io.BytesIO()
    table = 0
    while out.tell() < target:
        out.write(b"COPY public.t%d (id, a, b, n) FROM stdin;\n" % table)
        for _ in range(40):
            out.write(block)
        out.write(b"\\.\n\n")
        table += 1
    return out.getvalue()


def tar_data(target: int, rnd: random.Random, small: bool = False) -> bytes:
    """A tar of mostly small files (4-64 KiB), some large ones (1-8 MiB), dirs and long names;
    with ``small`` only files of 0-8 KiB (the per-header cost's worst case)."""
    pool = rnd.randbytes(16 << 20)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        i = 0
        while out.tell() < target:
            if i % 100 == 0:
                d = tarfile.TarInfo(f"./dir{i // 100}")
                d.type = tarfile.DIRTYPE
                tar.addfile(d)
            if small:
                size = rnd.randint(0, 8192)
            else:
                size = rnd.randint(1 << 20, 8 << 20) if i % 50 == 0 else rnd.randint(4096, 65536)
            start = rnd.randrange(len(pool) - size)
            name = f"./dir{i // 100}/" + ("long-" * 25 if i % 7 == 0 else "") + f"file{i}"
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(pool[start : start + size]))
            i += 1
    return out.getvalue()


def mysql_data(target: int, rnd: random.Random) -> bytes:
    """mysqldump extended INSERTs of ~1 MB with quoted, escaped strings."""
    words = ["alpha", "it\\'s", "a),(b", "back\\\\slash", "x" * 40, "2024-05-01 12:00:00"]
    tuples = ",".join(
        f"({i},'{rnd.choice(words)}','{rnd.choice(words)}',{rnd.randrange(1 << 30)},NULL)"
        for i in range(15000)
    ).encode()
    line = b"INSERT INTO `t` VALUES " + tuples + b";\n"
    return b"CREATE TABLE `t` (\n  `id` int\n);\n" + line * (target // len(line) + 1)


def chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), CHUNK):
        yield bytes(view[i : i + CHUNK])


def best_seconds(feed: Callable[[bytes], object], parts: list[bytes], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for part in parts:
            feed(part)
        best = min(best, time.perf_counter() - start)
    return best


def measure(name: str, data: bytes, make: Callable[[], object], rounds: int) -> None:
    parts = list(chunks(data))
    sha = best_seconds(hashlib.sha256().update, parts, rounds)
    taps: list[object] = []

    def fresh_feed(part: bytes) -> None:
        taps[-1].feed(part)  # type: ignore[attr-defined]

    best = float("inf")
    for _ in range(rounds):
        taps.append(make())
        best = min(best, best_seconds(fresh_feed, parts, 1))
    result = taps[-1].result()  # type: ignore[attr-defined]
    summary = {k: v for k, v in result.items() if k != "sample"}
    if "rows" in summary:
        summary = {"tables": len(result["rows"]), "rows": sum(result["rows"].values())}
    mb = len(data) / MB
    print(
        f"{name:6} {mb:7.1f} MB  tap {mb / best:8.1f} MB/s  sha256 {mb / sha:8.1f} MB/s  "
        f"tap/sha256 speed {sha / best:5.2f}  {summary}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the COPY and tar streams (MB)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rnd = random.Random(20241123)
    target = args.mb * MB
    measure("copy", copy_data(target, rnd), lambda: RowCounter("postgresql"), args.rounds)
    measure("tar", tar_data(target, rnd), TarFacts, args.rounds)
    measure("tar-s", tar_data(target // 4, rnd, small=True), TarFacts, args.rounds)
    measure("mysql", mysql_data(target // 4, rnd), lambda: RowCounter("mysql"), args.rounds)


if __name__ == "__main__":
    main()
