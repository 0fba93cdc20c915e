"""A Django-like server tree for the integration tests: seeded on the source host, compared after
a restore on the target (content, modes, owners, mtimes, symlinks, xattrs, ACLs, a WAL SQLite)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from recipes.apps.django import DEFAULT_EXCLUDES
from tests.integration.world import fingerprint

SQLITE_DB = "/var/opt/mysite/mysite.db"


def seed_tree(root: Path) -> None:
    """A Django-like server tree, plus junk inside directories the seed excludes."""
    files = {
        "etc/hostname": b"web1\n",
        "etc/opt/mysite/settings.py": b"DEBUG = False\nSECRET_KEY = 'x'\n",
        "home/django/.bashrc": b"export PATH\n",
        "home/django/notes with spaces.txt": b"n" * 3000,
        "opt/mysite/venv/bin/python": os.urandom(20000),
        "srv/data/blob.bin": os.urandom(300_000),
        "var/opt/mysite/media/upload.jpg": os.urandom(50_000),
        "root/.ssh/authorized_keys": b"ssh-ed25519 AAAA test\n",
        # excluded by the seed's list: must not come back
        "tmp/junk": b"junk",
        "var/cache/apt/pkgcache.bin": os.urandom(1000),
        "var/tmp/x": b"x",
        "proc/cpuinfo": b"fake",
        "var/lib/postgresql/15/main/PG_VERSION": b"15\n",
        "var/swapfile": b"\0" * 4096,
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "root/.ssh/authorized_keys").chmod(0o600)
    (root / "etc/opt/mysite/settings.py").chmod(0o640)
    os.chown(root / "home/django/.bashrc", 1000, 1000)
    (root / "home/django/link-to-settings").symlink_to("../../etc/opt/mysite/settings.py")
    (root / "var/empty-dir").mkdir(parents=True)
    # an extended attribute and POSIX ACLs (access and default) must come back as they were
    os.setxattr(root / "srv/data/blob.bin", "user.origin", b"upload from web1")
    subprocess.run(
        ["setfacl", "-m", "u:1000:rwx,d:u:1000:rwx", str(root / "var/opt/mysite/media")], check=True
    )
    db = sqlite3.connect(root / SQLITE_DB.lstrip("/"))
    db.executescript(
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE polls_question(id INTEGER PRIMARY KEY, text TEXT, pub REAL, img BLOB);"
        "CREATE INDEX q_text ON polls_question(text);"
    )
    db.executemany(
        "INSERT INTO polls_question(text, pub, img) VALUES (?, ?, ?)",
        [(f"question {i}", i * 1.5, os.urandom(64)) for i in range(500)],
    )
    db.commit()
    db.close()  # WAL checkpointed on close; the recipe must still copy it consistently
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.utime(p, (1_600_000_000, 1_600_000_000))


def comparable(root: Path) -> dict[str, tuple[object, ...]]:
    """The tree minus excludes, with the SQLite file left to the row comparison.

    The database is rebuilt from its consistent dump (so its bytes differ), and opening a
    WAL database creates and removes -wal/-shm files, which moves its directory's mtime.
    """
    tree = fingerprint(root, DEFAULT_EXCLUDES)
    db = SQLITE_DB.lstrip("/")
    tree.pop(db)
    parent = os.path.dirname(db)
    tree[parent] = (*tree[parent][:4], None, *tree[parent][5:])
    return tree


def sqlite_rows(path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, text, pub, img FROM polls_question ORDER BY id").fetchall()
    finally:
        db.close()
