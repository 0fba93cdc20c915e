"""Backup-time facts read from the byte streams as they pass: no extra downtime, no extra queries.

A *tap* is fed every chunk of one object's plain stream (before compression and encryption), in
whatever sizes the stream delivers, and afterwards gives a small JSON-safe ``result()`` for the
manifest. Two taps:

* :class:`TarFacts` reads a GNU/pax tar stream: regular files, directories, links, bytes, and the
  sha256 of a deterministic sample of files (the same tree gives the same sample on any machine,
  so a drill can re-hash those paths on the restored host).
* :class:`RowCounter` counts rows per table in a ``pg_dump``/``pg_dumpall``, ``mysqldump`` or
  ``sqlite3 .dump`` script.

Both keep bounded state (no whole line, statement or file is ever buffered) and skip bulk data
with ``bytes.find``/``count`` or a compiled regex, never a Python loop per byte. A tap never
raises on odd input: it stops counting and says why in ``result()["error"]``, because facts must
never fail the backup they describe.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Protocol

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
# The sample's order: sha256 of this prefix and the path, smallest first.
_SAMPLE_SALT = b"recipes.facts.sample\0"
# Metadata entries (long names, pax headers) larger than this are not kept (bytes).
_META_MAX = 16 << 20
# Only this much of a line is kept to recognise a statement (bytes); the rest is skipped.
_HEAD_MAX = 1 << 20


class Tap(Protocol):
    """Something fed the plain bytes of one object as they pass, giving facts at the end."""

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk (any size, split anywhere)."""

    def result(self) -> dict[str, Any]:
        """The facts so far, JSON-safe."""


def taps_for(kind: str, engine: str | None) -> list[Tap]:
    """The taps for one stored object: ``files`` -> tar facts, ``dump`` -> row counts."""
    if kind == "files":
        return [TarFacts()]
    if kind == "dump" and engine in ENGINES:
        return [RowCounter(engine)]
    return []


# --------------------------------------------------------------------------- tar


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 when the high bit of the first byte is set."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:  # negative base-256: never a size
            return 0
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _cstr(field: bytes) -> bytes:
    """A NUL-terminated tar string field."""
    return field.split(b"\0", 1)[0]


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """Parse pax extended header records (``"%d %s=%s\\n"``); stop at the first malformed one."""
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            break
        record = data[sp + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            break
        key, _, value = record[:-1].partition(b"=")
        out[key] = value
        pos += length
    return out


class TarFacts:
    """Counts and a content sample of a tar stream, read header by header as it passes.

    Regular files (types ``0``, ``\\0``, ``7``, GNU sparse ``S``) count in ``files`` and ``bytes``
    (a sparse file with its real size); directories (``5`` and GNU incremental dumpdirs ``D``) in
    ``dirs``; hard and symbolic links in ``links``. The sample holds the ``sample`` regular,
    non-sparse files of at most ``max_sample_bytes`` whose salted path hash is smallest
    ("bottom-k"): deterministic for a tree, independent of archive order, and only the current
    candidates' contents are hashed while they pass.
    """

    def __init__(self, sample: int = 16, max_sample_bytes: int = 1 << 20) -> None:
        self._k = sample
        self._max_sample = max_sample_bytes
        self._hdr = bytearray()
        self._skip = 0  # bytes of the current entry's data and padding still to pass
        self._hash_left = 0  # of those, file bytes still to hash
        self._hasher: Any = None
        self._candidate: tuple[str, bytes] | None = None
        self._meta_type = b""  # b"L", b"x", b"g" while a metadata entry's data passes
        self._meta_left = 0
        self._meta = bytearray()
        self._sparse_ext = False  # old GNU sparse: extension headers follow
        self._pending = 0  # the data size of an old GNU sparse file behind its extension headers
        self._long_name: bytes | None = None
        self._pax: dict[bytes, bytes] = {}
        self._global: dict[bytes, bytes] = {}
        self._zeros = 0
        self._ended = False
        self._error: str | None = None
        self._files = self._dirs = self._links = self._bytes = 0
        self._sample: dict[str, tuple[bytes, str]] = {}
        self._worst: bytes | None = None  # largest key in a full sample

    def feed(self, chunk: bytes) -> None:
        if self._ended or self._error is not None:
            return
        n = len(chunk)
        view = memoryview(chunk)
        pos = 0
        while pos < n:
            if self._skip:
                k = min(self._skip, n - pos)
                if self._hash_left:
                    h = min(k, self._hash_left)
                    self._hasher.update(view[pos : pos + h])
                    self._hash_left -= h
                if self._meta_left:
                    m = min(k, self._meta_left)
                    if len(self._meta) < _META_MAX:
                        self._meta += view[pos : pos + m]
                    self._meta_left -= m
                pos += k
                self._skip -= k
                if not self._skip:
                    self._entry_done()
                continue
            if self._hdr or n - pos < BLOCK:
                take = min(BLOCK - len(self._hdr), n - pos)
                self._hdr += view[pos : pos + take]
                pos += take
                if len(self._hdr) < BLOCK:
                    break
                block = bytes(self._hdr)
                self._hdr.clear()
            else:
                block = chunk[pos : pos + BLOCK]
                pos += BLOCK
            self._header(block)
            if self._ended or self._error is not None:
                return

    def _fail(self, why: str) -> None:
        self._error = why

    def _header(self, block: bytes) -> None:
        if self._sparse_ext:  # an old GNU sparse extension block: 21 map entries, then a flag
            self._sparse_ext = block[504] != 0
            if not self._sparse_ext:
                self._set_skip(self._pending)
            return
        if block == _ZERO_BLOCK:
            self._zeros += 1
            self._ended = self._zeros >= 2
            return
        self._zeros = 0
        stored = _number(block[148:156])
        if stored != sum(block) - sum(block[148:156]) + 8 * 32:
            self._fail(f"tar header checksum mismatch after {self._files + self._dirs + self._links} entries")
            return
        kind = block[156:157]
        size = _number(block[124:136])
        if kind in (b"L", b"K", b"x", b"g"):
            self._meta_type = kind
            self._meta_left = size
            self._meta.clear()
            self._set_skip(size)
            return
        name = _cstr(block[0:100])
        if block[257:263] == b"ustar\x00":  # POSIX: a prefix field; GNU uses those bytes otherwise
            prefix = _cstr(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        if self._long_name is not None:
            name = self._long_name
        pax = {**self._global, **self._pax} if self._global else self._pax
        if b"path" in pax:
            name = pax[b"path"]
        if b"size" in pax:
            try:
                size = int(pax[b"size"])
            except ValueError:
                self._fail("a pax size that is not a number")
                return
        self._long_name = None
        self._pax = {}
        if kind in (b"0", b"\0", b"7"):
            real = pax.get(b"GNU.sparse.realsize") or pax.get(b"GNU.sparse.size")
            self._files += 1
            if real is not None:  # pax sparse formats: data holds a map, not the file
                self._bytes += int(real)
                self._drop(pax.get(b"GNU.sparse.name", name))
            else:
                self._bytes += size
                self._consider(name, size)
            self._set_skip(size)
        elif kind == b"S":
            self._files += 1
            self._bytes += _number(block[483:495])
            self._drop(name)
            self._pending = size
            if block[482]:
                self._sparse_ext = True
            else:
                self._set_skip(size)
        elif kind in (b"5", b"D"):
            self._dirs += 1
            self._set_skip(size if kind == b"D" else 0)
        elif kind in (b"1", b"2"):
            self._links += 1
            self._drop(name)
        elif kind in (b"3", b"4", b"6"):
            self._drop(name)
        else:  # V, M, N and unknown types: pass their data
            self._set_skip(size)

    def _set_skip(self, size: int) -> None:
        self._skip = (size + BLOCK - 1) // BLOCK * BLOCK
        if not self._skip:
            self._entry_done()

    def _consider(self, name: bytes, size: int) -> None:
        """Start hashing this file if it would enter the sample."""
        self._drop(name)
        if self._k <= 0 or size > self._max_sample:
            return
        try:
            path = name.decode()
        except UnicodeDecodeError:
            return  # not JSON-safe as a key, and not restorable by name everywhere
        key = hashlib.sha256(_SAMPLE_SALT + name).digest()
        if self._worst is not None and key >= self._worst:
            return
        self._candidate = (path, key)
        self._hasher = hashlib.sha256()
        self._hash_left = size

    def _drop(self, name: bytes) -> None:
        """A later entry of the same path replaces an earlier one: forget the earlier's hash."""
        if self._sample:
            path = name.decode(errors="replace")
            if self._sample.pop(path, None) is not None:
                self._worst = None

    def _entry_done(self) -> None:
        if self._meta_type:
            data = bytes(self._meta)
            if self._meta_type == b"L":
                self._long_name = _cstr(data)
            elif self._meta_type == b"x":
                self._pax = _pax_records(data)
            elif self._meta_type == b"g":
                self._global.update(_pax_records(data))
            self._meta_type = b""
            self._meta.clear()
        if self._candidate is not None:
            path, key = self._candidate
            self._sample[path] = (key, self._hasher.hexdigest())
            if len(self._sample) > self._k:
                del self._sample[max(self._sample, key=lambda p: self._sample[p][0])]
            if len(self._sample) >= self._k:
                self._worst = max(v[0] for v in self._sample.values())
            self._candidate = None
            self._hasher = None

    @property
    def files_seen(self) -> int:
        """Regular files passed so far: the progress display reads it from its own thread."""
        return self._files

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "files": self._files,
            "dirs": self._dirs,
            "links": self._links,
            "bytes": self._bytes,
            "sample": {p: self._sample[p][1] for p in sorted(self._sample)},
        }
        if self._error is not None:
            out["error"] = self._error
        elif not self._ended:
            out["error"] = "the tar stream ended without its end-of-archive blocks"
        return out


# --------------------------------------------------------------------------- SQL dumps

ENGINES = ("postgresql", "mysql", "sqlite")

# One identifier, quoted in any of the dialects' ways, or bare.
_IDENT = rb'(?:"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|[^\s.,;()"`\[\]]+)'
_NAME = rb"(" + _IDENT + rb"(?:\s*\.\s*" + _IDENT + rb")*)"
_IDENT_RE = re.compile(_IDENT)
_COPY = re.compile(rb"COPY\s+" + _NAME + rb"\s*(?:\(.*\))?\s*FROM\s+stdin;\s*\Z", re.S)
_PG_CONNECT = re.compile(rb"\\connect\s+(-reuse-previous=on\s+)?(" + _IDENT + rb")")
_CREATE = re.compile(rb"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME, re.I)
_USE = re.compile(rb"USE\s+(" + _IDENT + rb")\s*;", re.I)
_INSERT = re.compile(
    rb"(?:INSERT(?:\s+IGNORE)?|REPLACE)\s+INTO\s+"
    + _NAME
    + rb"\s*(?:\((?:[^()'\"`]|`(?:[^`]|``)*`|\"(?:[^\"]|\"\")*\")*\))?\s*VALUES\s*",
    re.I,
)
# Statement starts a dump line may begin with that matter to some engine (upper case).
_WATCH = {
    "postgresql": (b"COPY ", b"\\CONNECT "),
    "mysql": (b"INSERT ", b"REPLACE ", b"CREATE TABLE ", b"USE ", b"DELIMITER "),
    "sqlite": (b"INSERT ", b"CREATE TABLE ", b"CREATE TRIGGER "),
}
# Inside a VALUES list: between tuples, inside a tuple (whole strings at once), inside a string.
# Possessive quantifiers: a tuple cut by the chunk's end must fail fast, not backtrack.
_STRING = {"mysql": rb"'[^'\\]*+(?:\\.[^'\\]*+)*+'", "sqlite": rb"'[^']*+'"}
_BODY = {e: rb"(?:[^'()]++|" + q + rb")*+" for e, q in _STRING.items()}
_OUT = re.compile(rb"[^(;']*+")
_IN = {e: re.compile(b, re.S) for e, b in _BODY.items()}
_STR = {"mysql": re.compile(rb"[^'\\]*+(?:\\.[^'\\]*+)*+", re.S), "sqlite": re.compile(rb"[^']*+")}
# A run of whole tuples without nested parentheses, and one such tuple: counted in C.
_RUN = {e: re.compile(rb"(?:[\s,]*+\(" + b + rb"\))*+", re.S) for e, b in _BODY.items()}
_TUPLE = {e: re.compile(rb"\(" + b + rb"\)", re.S) for e, b in _BODY.items()}
_COPY_END = b"\n\\.\n"

_LINE, _COPYDATA, _VALUES, _SKIPLINE, _DONE = range(5)


def _unquote(ident: bytes) -> str:
    """One identifier without its quotes (doubled quote characters undone)."""
    if len(ident) >= 2:
        first, last = ident[:1], ident[-1:]
        if first == last and first in (b'"', b"`"):
            ident = ident[1:-1].replace(first + first, first)
        elif first == b"[" and last == b"]":
            ident = ident[1:-1]
    return ident.decode(errors="replace")


def _table(name: bytes) -> str:
    """A possibly qualified table name as ``part.part`` without quotes."""
    return ".".join(_unquote(m.group(0)) for m in _IDENT_RE.finditer(name))


def _conninfo_dbname(conninfo: str) -> str:
    """The dbname of pg_dump's ``dbname=VALUE`` connection string (VALUE maybe '...' with \\ escapes)."""
    value = conninfo.partition("dbname=")[2]
    if not value.startswith("'"):
        return value.split()[0] if value.split() else value
    out: list[str] = []
    i = 1
    while i < len(value) and value[i] != "'":
        if value[i] == "\\" and i + 1 < len(value):
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


class RowCounter:
    """Rows per table in a SQL dump script, counted as the script passes.

    ``postgresql``: lines of ``COPY name (...) FROM stdin;`` blocks up to ``\\.`` (pg_dump escapes
    a backslash in data as ``\\\\``, so no data line is ``\\.``); after ``\\connect db`` (pg_dumpall,
    pg_dump --create) keys are ``db.schema.table``. ``mysql``: tuples of ``INSERT``/``REPLACE``
    statements, strings with backslash escapes; ``USE db`` prefixes ``db.``; ``CREATE TABLE`` shows
    a table with 0 rows; routines and triggers between ``DELIMITER`` lines are not read.
    ``sqlite``: tuples of ``INSERT`` statements (strings with doubled quotes, newlines allowed);
    ``CREATE TABLE`` shows 0 rows; nothing after the first ``CREATE TRIGGER`` (sqlite3 writes
    triggers after all table data, and their bodies hold INSERT statements).
    """

    def __init__(self, engine: str) -> None:
        if engine not in ENGINES:
            raise ValueError(f"no row counter for database engine {engine!r}")
        self.engine = engine
        self._watch = _WATCH[engine]
        self._rows: dict[str, int] = {}
        self._db: str | None = None
        self._mode = _LINE
        self._head = bytearray()  # the start of a line not yet recognised
        self._key = ""
        self._tail = b"\n"  # in COPY data: the end of the data seen so far that may start \.
        self._depth = 0
        self._in_str = False
        self._escape = False
        self._in_delimiter = False
        if engine in _IN:
            self._in_re = _IN[engine]
            self._str_re = _STR[engine]
            self._run_re = _RUN[engine]
            self._tuple_re = _TUPLE[engine]

    def feed(self, chunk: bytes) -> None:
        pos = 0
        n = len(chunk)
        while pos < n:
            mode = self._mode
            if mode == _COPYDATA:
                pos = self._copy(chunk, pos)
            elif mode == _VALUES:
                pos = self._values(chunk, pos)
            elif mode == _SKIPLINE:
                nl = chunk.find(b"\n", pos)
                if nl < 0:
                    return
                pos = nl + 1
                self._mode = _LINE
            elif mode == _LINE:
                pos = self._line(chunk, pos)
            else:
                return

    # -- lines

    def _line(self, chunk: bytes, pos: int) -> int:
        """Recognise the statement starting this line; return where to go on in chunk."""
        n = len(chunk)
        if self._head:
            room = _HEAD_MAX - len(self._head)
            nl = chunk.find(b"\n", pos, pos + room)
            end = nl + 1 if nl >= 0 else min(n, pos + room)
            self._head += chunk[pos:end]
            buf = bytes(self._head)
            at = self._statement(buf, 0, len(buf), nl >= 0 or len(buf) >= _HEAD_MAX)
            if at is None:
                return end
            self._head.clear()
            if at < len(buf):
                self.feed(buf[at:])  # the start of a VALUES list: bounded by _HEAD_MAX
            return end
        nl = chunk.find(b"\n", pos, pos + _HEAD_MAX)
        complete = nl >= 0
        end = nl + 1 if complete else min(n, pos + _HEAD_MAX)
        at = self._statement(chunk, pos, end, complete or end - pos >= _HEAD_MAX)
        if at is None:
            self._head += chunk[pos:end]
            return end
        return at

    def _statement(self, buf: bytes, start: int, end: int, final: bool) -> int | None:
        """Act on the line ``buf[start:end]`` (complete when it ends with a newline, or final).

        Returns where reading goes on, or None when more of the line is needed.
        """
        complete = end > start and buf[end - 1] == 0x0A
        lead = buf[start : start + 16].upper()
        if not any(lead.startswith(w) or w.startswith(lead) for w in self._watch):
            return self._rest_of_line(complete, end)
        if self.engine == "postgresql":
            if not (complete or final):
                return None
            self._pg_line(buf[start:end].rstrip(b"\r\n"))
            return self._rest_of_line(complete, end)
        if self._in_delimiter:  # a routine or trigger body: only its closing DELIMITER matters
            if not b"DELIMITER ".startswith(lead[:10]):
                return self._rest_of_line(complete, end)
            if not (complete or final):
                return None
            self._in_delimiter = buf[start:end].split()[1:2] != [b";"]
            return self._rest_of_line(complete, end)
        m = _INSERT.match(buf, start, end)
        if m is not None:  # MariaDB puts each tuple on a line of its own: go on across lines
            self._key = self._qualified(_table(m.group(1)))
            self._rows.setdefault(self._key, 0)
            self._mode = _VALUES
            self._depth = 0
            self._in_str = self._escape = False
            return m.end()
        if not (complete or final):
            return None
        line = buf[start:end]
        if lead.startswith(b"CREATE TRIGGER "):
            self._mode = _DONE
            return end
        if lead.startswith(b"DELIMITER "):
            self._in_delimiter = line.split()[1:2] != [b";"]
        elif (c := _CREATE.match(line)) is not None:
            self._rows.setdefault(self._qualified(_table(c.group(1))), 0)
        elif (u := _USE.match(line)) is not None and self.engine == "mysql":
            self._db = _unquote(u.group(1))
        return self._rest_of_line(complete, end)

    def _rest_of_line(self, complete: bool, end: int) -> int:
        if not complete:
            self._mode = _SKIPLINE
        return end

    def _qualified(self, table: str) -> str:
        return f"{self._db}.{table}" if self._db is not None else table

    def _pg_line(self, line: bytes) -> None:
        c = _COPY.match(line)
        if c is not None:
            self._key = self._qualified(_table(c.group(1)))
            self._rows.setdefault(self._key, 0)
            self._mode = _COPYDATA
            self._tail = b"\n"
            return
        m = _PG_CONNECT.match(line)
        if m is not None:
            name = _unquote(m.group(2))
            self._db = _conninfo_dbname(name) if m.group(1) else name

    # -- COPY data

    def _copy(self, chunk: bytes, pos: int) -> int:
        """Count data lines up to the ``\\.`` line; return where the block ended (or len(chunk))."""
        n = len(chunk)
        if self._tail:  # a terminator may have begun in an earlier chunk
            need = _COPY_END[len(self._tail) :]
            got = chunk[pos : pos + len(need)]
            if got == need:
                self._mode = _LINE
                return pos + len(need)
            if need.startswith(got):  # chunk too short to tell
                self._tail += got
                return n
            self._tail = b""
        i = chunk.find(_COPY_END, pos)
        if i >= 0:
            self._rows[self._key] += chunk.count(b"\n", pos, i + 1)
            self._mode = _LINE
            return i + 4
        self._rows[self._key] += chunk.count(b"\n", pos)
        for t in (b"\n\\.", b"\n\\", b"\n"):
            if chunk.endswith(t, pos):
                self._tail = t
                break
        return n

    # -- VALUES lists

    def _values(self, chunk: bytes, pos: int) -> int:
        """Count the tuples of an INSERT's VALUES list; return where the statement ended."""
        n = len(chunk)
        rows = self._rows
        key = self._key
        while pos < n:
            if self._in_str:
                if self._escape:
                    self._escape = False
                    pos += 1
                    continue
                pos = self._str_re.match(chunk, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    break
                if chunk[pos] == 0x5C:  # backslash (mysql only)
                    if pos + 1 < n:
                        pos += 2
                    else:
                        self._escape = True
                        pos += 1
                else:
                    self._in_str = False
                    pos += 1
            elif self._depth == 0:
                run = self._run_re.match(chunk, pos).end()  # type: ignore[union-attr]
                if run > pos:  # whole tuples: count them without a Python step each
                    rows[key] += len(self._tuple_re.findall(chunk, pos, run))
                    pos = run
                pos = _OUT.match(chunk, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    break
                c = chunk[pos]
                pos += 1
                if c == 0x28:  # (
                    rows[key] += 1
                    self._depth = 1
                elif c == 0x3B:  # ;
                    self._mode = _LINE
                    return pos
                else:
                    self._in_str = True
            else:
                pos = self._in_re.match(chunk, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    break
                c = chunk[pos]
                pos += 1
                if c == 0x28:
                    self._depth += 1
                elif c == 0x29:
                    self._depth -= 1
                else:  # a string that goes on in the next chunk
                    self._in_str = True
        return n

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": dict(sorted(self._rows.items()))}
        if self._mode in (_COPYDATA, _VALUES):
            out["error"] = f"the dump ended inside the data of {self._key}"
        return out
