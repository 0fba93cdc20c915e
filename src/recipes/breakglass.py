"""Break-glass restore: fenced ``sh`` blocks that restore a plan with standard tools only.

Rendered from the same ops the engine executes (``Plan.ops()``), so the blocks cannot drift from
what ``recipes restore`` does: the same remote command line (``Command.wire``, secrets read from
stdin by the remote bash), the same order (guards first, then every op; a chain's archives from
its full up), the same undos (run when the script ends, failure-only ones when it failed).
Tools: ``ssh``, ``ssh-keygen -Y verify``, ``sha256sum``, ``age``, ``zstd``, ``tar``, ``rclone``
(S3 repositories and buckets, configured by ``RCLONE_CONFIG_*`` variables), ``duplicity`` + ``gpg``.

Secrets are never written in: a block reads them from variables the operator sets (named in the
first block), and hands them to the one program that needs them on stdin or in its environment.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

import attrs

from recipes import manifest as mf
from recipes import ops
from recipes.model import Command, sh
from recipes.plan import Plan
from recipes.render import kind

SIGNER_IDENTITY = "recipes"
"""The principal of every line of the allowed-signers file ``ssh-keygen -Y verify -I`` checks
(recipes signs without an identity: sshsig has none; the namespace ties it to manifests)."""
MANIFEST_NAMESPACE = "recipes-manifest"
_VALUE = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")
S3_XATTRS = "user.s3.*"
"""The xattrs ``tar --xattrs`` sets from a bucket tar's PAX headers (``recipes.buckets``)."""
MAPPER = "s3meta.sed"
S3_MAPPER = (
    r's/,[[:space:]]*"(atime|btime|gid|mode|mtime|uid)":[[:space:]]*"[^"\\]*"//g',
    r's/\{([[:space:]]*)"(atime|btime|gid|mode|mtime|uid)":[[:space:]]*"[^"\\]*",?/{\1/g',
    r's/([{,][[:space:]]*)"s3\.content-type"/\1"content-type"/g',
    r's/([{,][[:space:]]*)"s3\.meta\./\1"/g',
)
"""``sed -zE`` program rclone's ``--metadata-mapper`` runs on each object's metadata (JSON): a
key is a quoted string right after ``{`` or ``,`` (inside a value a quote is always escaped), so
only keys change. The local keys go first, then ``s3.content-type`` and ``s3.meta.NAME`` become
``content-type`` and ``NAME`` (a user key named ``mode`` is kept)."""


@attrs.frozen
class Block:
    """One fenced ``sh`` block of the runbook: run in order, as written, in one shell."""

    title: str
    script: str
    check: str = ""
    """How to see the block worked (prose, shown under it)."""


def allowed_signers(signers: Sequence[str]) -> str:
    """The allowed-signers file for ``ssh-keygen -Y verify``: one line per trusted public key
    (``[repository] signers``), limited to the manifest namespace."""
    return "".join(
        f'{SIGNER_IDENTITY} namespaces="{MANIFEST_NAMESPACE}" {" ".join(s.split()[:2])}\n' for s in signers
    )


def remote_line(command: Command, sudo: bool = False) -> str:
    """The exec string ``ssh`` hands the host: exactly ``Command.wire(sudo)``'s, without reading
    any secret (the remote bash reads each one from stdin, never from argv). ``sudo``: the
    host's ``[hosts.*] sudo = true`` (a non-root login: every command through ``sudo -n``)."""
    reads = "".join(f"IFS= read -r {name} && " for name, _ in command.secrets)
    cd = "cd / && " if command.user else ""
    line = f"bash -c {shlex.quote(f'set -o pipefail; {cd}{reads}{command.script}')}"
    if command.user:
        line = f"sudo -n -u {shlex.quote(command.user)} -- {line}"
    if sudo:
        line = f"sudo -n -- {line}"
    return line


def blocks(
    plan: Plan,
    repo_url: str,
    manifest: mf.Manifest | None = None,
    chain: Sequence[mf.Manifest] | None = None,
    *,
    sudo: bool = False,
) -> list[Block]:
    """The break-glass blocks for a restore ``plan``; with ``manifest`` the snapshot's real object
    names, sizes and sha256 are filled in (for an incremental, of every snapshot of its chain:
    ``chain``, full first, or read from ``repo_url``), else ``$SNAPSHOT`` stands for the
    snapshot's folder. ``sudo``: the host logs in as a non-root user and recipes runs every
    command through ``sudo -n`` (``[hosts.*] sudo = true``); the blocks do the same."""
    if manifest is not None and chain is None:
        chain = _chain(repo_url, manifest)
    whole = list(chain or ([manifest] if manifest else []))
    for m in whole:  # written into the script unquoted: only plain names (the chain may be unread)
        for name in (m.snapshot, *(o.path for o in (*m.objects, *m.external) if o not in m.external)):
            if not _PLAIN.fullmatch(name) or ".." in name:
                raise ValueError(
                    f"snapshot {m.snapshot!r}: {name!r} is not a plain name; not written into a script"
                )
    return _Writer(plan, repo_url, manifest, whole, sudo).blocks()


_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def _chain(repo_url: str, manifest: mf.Manifest) -> list[mf.Manifest]:
    """The snapshots a restore of ``manifest`` applies, full first (read, not trusted: the first
    block checks every manifest's signature itself)."""
    if manifest.level == 0:
        return [manifest]
    from recipes import chain
    from recipes.repository import Repository

    repo = Repository(repo_url)
    return chain.resolve(manifest, lambda sid: repo.load(manifest.recipe, manifest.host, sid))


def _var(name: str) -> str:
    """The shell variable holding a run-time value (``running looker`` -> ``V_running_looker``)."""
    return "V_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _remote_s3(url: str) -> bool:
    return url.split("://", 1)[0] in ("s3", "s3a")


def _rclone_path(url: str, remote: str) -> str:
    return f"{remote}:{url.split('://', 1)[1].rstrip('/')}"


class _Writer:
    """Turns a plan's ops into shell text, step by step; remembers what the first block must say."""

    def __init__(
        self, plan: Plan, repo_url: str, manifest: mf.Manifest | None, chain: list[mf.Manifest], sudo: bool
    ):
        self.plan = plan
        self.sudo = sudo
        self.repo_url = repo_url
        self.manifest = manifest
        self.chain = chain
        self.s3 = _remote_s3(repo_url)
        self.secrets: dict[str, str] = {}
        """Controller variables the operator sets -> what they hold."""
        self.roles: set[str] = set()
        self.values: set[str] = set()
        self.key_store = False
        self.mapper = False
        """Whether a bucket block wrote the metadata mapper already."""

    # ---- the whole document

    def blocks(self) -> list[Block]:
        reads = self._reads()
        guards = [op for op in self.plan.ops() if isinstance(op, ops.Guard)]
        steps: list[Block] = []
        for i, step in enumerate(self.plan.steps, 1):
            lines: list[str] = []
            checks: list[str] = []
            for op in step.ops():
                lines += self._op(op, checks)
            if lines:
                title = f"{i}. {kind(step)} {step.name}" + (f": {step.about}" if step.about else "")
                checks.insert(0, "the block ends without an error")
                steps.append(Block(title, "\n".join(lines), "; ".join(checks)))
        self.from_repo = bool(reads) or self._fetches_keys()
        out = [self._setup(), *([self._verify(reads)] if self.from_repo else [])]
        if guards:
            out.append(self._guards(guards))
        return out + steps + [self._done()]

    def _reads(self) -> list[tuple[ops.SnapshotObject, bool]]:
        """Every snapshot object the plan reads, and whether from every snapshot of the chain."""
        out: list[tuple[ops.SnapshotObject, bool]] = []
        for op in self.plan.ops():
            if isinstance(op, ops.Transfer) and isinstance(op.src, ops.SnapshotObject):
                out.append((op.src, op.src.chain))
        return out

    def _setup(self) -> Block:
        lines = [
            "# Set these before running (never write a secret's value here):",
            f"#   HOST             ssh destination of the host to restore onto (was {self.plan.host};",
            "#                    an alias in ~/.ssh/config for its port, user and key works)",
        ]
        if self.sudo:
            lines.append(
                "#                    its login user runs every command through `sudo -n` (sudo = true)"
            )
        if self.from_repo:
            lines += [
                "#   IDENTITY         the age secret key file (`recipes init`'s identity.txt)",
                "#   ALLOWED_SIGNERS  an allowed-signers file, one line per key of [repository] signers:",
                f'#                  {SIGNER_IDENTITY} namespaces="{MANIFEST_NAMESPACE}" ssh-ed25519 AAAA...',
                "#                  (the runbook's prerequisites list this repository's lines)",
            ]
        if self.from_repo and self.manifest is None:
            lines.append("#   SNAPSHOT         the snapshot's folder (holding manifest.json)")
        elif self.from_repo:
            where = "the repository: a folder" if not self.s3 else "the repository (an rclone path)"
            lines.append(f"#   REPO             {where}; default {self.repo_url}")
        if self.s3 or any(self._s3_key_store()):
            lines += [
                "#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY  the repository's S3 keys (rclone reads them)",
                "#   S3_ENDPOINT      the S3 endpoint URL ([repository] options endpoint_url); empty for AWS",
            ]
        if self.key_store and self.manifest is None:
            lines.append(
                "#   KEY_STORE        the key store's folder for this snapshot (<store>/<recipe>/<host>/<id>)"
            )
        for role in sorted(self.roles):
            lines.append(f"#   {_role_var(role):<16} the {role} hosts' ssh destinations, space-separated")
        for env, what in sorted(self.secrets.items()):
            lines.append(f"#   {env:<16} {what} (a secret: read from here, sent on stdin only)")
        lines += [
            "#   SSH_CONFIG       (optional) an ssh_config file for HOST (its port, user, key, host key)",
            "#   FORCE=yes        (optional) restore over a non-empty target, as --force",
        ]
        need = ["HOST"]
        if self.from_repo:
            need += ["IDENTITY", "ALLOWED_SIGNERS", *(["SNAPSHOT"] if self.manifest is None else [])]
        need += [_role_var(r) for r in sorted(self.roles)] + sorted(self.secrets)
        lines.append("set -euo pipefail  # the first failed check or command stops the restore")
        lines += [f': "${{{name}:?set {name} first (see above)}}"' for name in need]
        if self.manifest is not None and self.from_repo:
            default = self.repo_url.rstrip("/") if not self.s3 else _rclone_path(self.repo_url, "repo")
            lines.append(f': "${{REPO:={sh(default) if " " in default else default}}}"')
        if self.s3 or any(self._s3_key_store()):
            lines += [
                "export RCLONE_CONFIG_REPO_TYPE=s3 RCLONE_CONFIG_REPO_PROVIDER=Other",
                "export RCLONE_CONFIG_REPO_ENV_AUTH=true  # keys: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY",
                'export RCLONE_CONFIG_REPO_ENDPOINT="${S3_ENDPOINT:-}"',
            ]
        lines += [
            "for tool in ssh tar"
            + (" ssh-keygen sha256sum age zstd" if self.from_repo else "")
            + (" rclone" if self._uses_rclone() else "")
            + (" duplicity gpg gpgconf bunzip2" if self._uses_duplicity() else "")
            + '; do command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }; done',
            'ssh() { command ssh ${SSH_CONFIG:+-F "$SSH_CONFIG"} "$@"; }',
            "WORK=$(mktemp -d)  # private scratch space on this machine, removed at the end",
            "RUN=breakglass-$(date -u +%Y%m%dT%H%M%SZ)  # names what this run leaves aside on the host",
            "UNDO=()  # what recipes runs however a restore ends: run at exit, newest first",
            'undo() { UNDO=("$1" "${UNDO[@]}"); }',
            'finish() { rc=$?; set +e; for u in "${UNDO[@]}"; do eval "$u"; done; rm -rf "$WORK"; '
            'exit "$rc"; }',
            "trap finish EXIT",
        ]
        return Block(
            "Set the variables every block uses",
            "\n".join(lines),
            "no `set ... first` line; save every block, in order, into one file and run it with bash",
        )

    def _s3_key_store(self) -> list[str]:
        if self.manifest is None:
            return []
        return [o.path for o in self.manifest.external if _remote_s3(o.path)]

    def _uses_rclone(self) -> bool:
        bucket = any(
            isinstance(op, ops.Transfer) and isinstance(op.dst, ops.Bucket) for op in self.plan.ops()
        )
        return self.s3 or bucket or bool(self._s3_key_store())

    def _uses_duplicity(self) -> bool:
        return any(
            isinstance(op, ops.Transfer) and isinstance(op.src, ops.DuplicityCollection)
            for op in self.plan.ops()
        )

    # ---- signature and checksums

    def _dir(self, i: int) -> str:
        return f"$S{i}" if self.manifest is not None else "$SNAPSHOT"

    def _verify(self, reads: list[tuple[ops.SnapshotObject, bool]]) -> Block:
        if self.manifest is None:
            return self._verify_unknown()
        verify = sh("ssh-keygen", "-Y", "verify", "-f", "$ALLOWED_SIGNERS", "-I", SIGNER_IDENTITY)
        verify = verify.replace("'$ALLOWED_SIGNERS'", '"$ALLOWED_SIGNERS"')
        lines: list[str] = []
        sums: list[str] = []
        last = len(self.chain) - 1
        for i, m in enumerate(self.chain):
            rel = f"{_safe(m.recipe)}/{_safe(m.host)}/{m.snapshot}"
            what = "full (level 0)" if m.level == 0 else f"incremental level {m.level} on {m.parent}"
            wanted = [
                obj
                for src, whole_chain in reads
                if whole_chain or i == last
                if (obj := m.object(src.name)) is not None
            ]
            lines.append(f"# snapshot {m.snapshot}: {what}")
            if self.s3:
                lines.append(f'S{i}="$WORK/{m.snapshot}" && mkdir -p "$S{i}"')
                for name in ["manifest.json", "manifest.sig", *(o.path for o in wanted)]:
                    lines.append(f'rclone copyto "$REPO/{rel}/{name}" "$S{i}/{name}"')
            else:
                lines.append(f'S{i}="$REPO/{rel}"')
            lines.append(
                f'{verify} -n {MANIFEST_NAMESPACE} -s "$S{i}/manifest.sig" < "$S{i}/manifest.json" || '
                f"{{ echo 'the manifest of {m.snapshot} is not signed by a trusted key: stop' >&2; exit 1; }}"
            )
            for obj in wanted:
                lines.append(
                    f'grep -qF \'"sha256": "{obj.sha256}"\' "$S{i}/manifest.json" || '
                    f"{{ echo '{obj.name}: its sum is not in the signed manifest: stop' >&2; exit 1; }}"
                )
                lines.append(
                    f'test "$(wc -c < "$S{i}/{obj.path}")" -eq {obj.size} || '
                    f"{{ echo '{obj.path} of {m.snapshot} is not {obj.size} bytes' >&2; exit 1; }}"
                )
                sums.append(f"{obj.sha256}  $S{i}/{obj.path}")
        if self.manifest.external and self._fetches_keys():
            lines.append("# key files kept apart from the repository (their store)")
            for n, obj in enumerate(self.manifest.external):
                local = f"$WORK/key-{n}.zst.age"
                if _remote_s3(obj.path):
                    lines.append(f'rclone copyto {sh(_rclone_path(obj.path, "repo"))} "{local}"')
                else:
                    lines.append(f'cp -- {sh(obj.path.removeprefix("file://"))} "{local}"')
                lines.append(
                    f'grep -qF \'"sha256": "{obj.sha256}"\' "$S{last}/manifest.json" || '
                    f"{{ echo 'key file {obj.name}: its sum is not in the signed manifest' >&2; exit 1; }}"
                )
                lines.append(
                    f'test "$(wc -c < "{local}")" -eq {obj.size} || '
                    f"{{ echo 'key file {obj.name} is not {obj.size} bytes' >&2; exit 1; }}"
                )
                sums.append(f"{obj.sha256}  {local}")
        if sums:
            lines += [
                "sha256sum --check --strict <<EOF || { echo 'a sha256 does not match' >&2; exit 1; }",
                *sums,
                "EOF",
            ]
        return Block(
            "Check the manifest's signature and every object's size and sha256",
            "\n".join(lines),
            f'`Good "{MANIFEST_NAMESPACE}" signature` for each manifest and `OK` for each object; '
            "anything else: stop, the snapshot is damaged or forged",
        )

    def _fetches_keys(self) -> bool:
        return any(
            isinstance(op, ops.Transfer) and isinstance(op.src, ops.KeyStore) for op in self.plan.ops()
        )

    def _verify_unknown(self) -> Block:
        """Without a manifest: the sums are read from the (signature-checked) manifest itself."""
        objects = (
            'awk -F\'"\' \'/^  "/{o=($2=="objects")} '
            'o && /^      "path": /{p=$4} '
            'o && /^      "sha256": /{if(p!=""){print $4"  "p; p=""}}\' manifest.json'
        )
        lines = [
            'cd "$SNAPSHOT"',
            f'ssh-keygen -Y verify -f "$ALLOWED_SIGNERS" -I {SIGNER_IDENTITY} -n {MANIFEST_NAMESPACE} '
            "-s manifest.sig < manifest.json",
            f"{objects} | sha256sum --check --strict",
            "grep -q '\"level\": 0,' manifest.json || "
            "{ echo 'an incremental: render the runbook with --snapshot to list its chain' >&2; exit 1; }",
            'cd "$OLDPWD"',
        ]
        return Block(
            "Check the manifest's signature and every object's sha256",
            "\n".join(lines),
            f'`Good "{MANIFEST_NAMESPACE}" signature` and `OK` for each object; anything else: stop',
        )

    # ---- guards: every refusal before anything is written

    def _guards(self, guards: list[ops.Guard]) -> Block:
        lines: list[str] = []
        for g in guards:
            lines += self._on_hosts(g.role, self._guard(g))
        return Block(
            "Refuse early: what recipes checks before it writes anything",
            "\n".join(lines),
            "no `refusing:` line",
        )

    def _guard(self, g: ops.Guard) -> list[str]:
        *before, ssh = self._ssh(g.probe, stdin=False)
        v = g.verdict
        if isinstance(v, ops.MustBeEmpty):
            refuse = sh(f"refusing: target {v.path} is not empty: set FORCE=yes to restore over it")
            return [
                f"# {v.describe()}",
                *before,
                f'{ssh} || [ "${{FORCE:-}}" = yes ] || {{ echo {refuse} >&2; exit 1; }}',
            ]
        if isinstance(v, ops.NotOlder):
            wanted = self.manifest.facts.get(v.fact, "") if self.manifest else ""
            if not wanted or not ops._version(wanted):
                return [f"# {v.describe()}: the snapshot recorded no version, nothing to compare"]
            hint = f": {v.hint}" if v.hint else ""
            unread = sh(f"refusing: cannot read the {v.what} version on the target{hint}")
            older = sh(f"refusing: the snapshot is from {v.what} {wanted} but the target is older{hint}")
            normal = ".".join(str(n) for n in ops._version(wanted))
            return [
                f"# {v.describe()}: {wanted}",
                "ver() { grep -oE '[0-9]+' <<<\"$1\" | head -n 4 | paste -sd. - || true; }",
                *before,
                f"found=$({ssh}) && st=0 || st=$?",
                *(
                    ['if [ "$st" -eq 0 ] && [ -z "$found" ]; then :  # nothing installed there yet']
                    if v.missing_ok
                    else ["if false; then :"]
                ),
                f'elif [ "$st" -ne 0 ] || [ -z "$(ver "$found")" ]; then echo {unread} >&2; exit 1',
                f'elif [ "$(printf \'%s\\n\' "$(ver "$found")" {normal} | sort -V | head -n 1)" '
                f"!= {normal} ]; then "
                f"echo {older} >&2; exit 1",
                "fi",
            ]
        return [f"# {v.describe()}: check by hand", *before, ssh]

    # ---- ops

    def _op(self, op: ops.Op, checks: list[str]) -> list[str]:
        if isinstance(op, ops.Exec):
            return self._on_hosts(op.role, self._exec(op), op.when)
        if isinstance(op, ops.Undo):
            return self._undo(op)
        if isinstance(op, ops.Release):
            return [f"# recipes runs the undo '{op.what}' at once here (see the undos above)"]
        if isinstance(op, ops.Manual):
            out = [f"# MANUAL, yours to do (never run by recipes): {op.text}"]
            if op.shell:
                out.append(f"#   $ {op.shell}")
            return out
        if isinstance(op, ops.Guard):
            return [f"# checked before anything was written: {op.verdict.describe()}"]
        return self._transfer(op, checks)

    def _on_hosts(self, role: str, lines: list[str], when: str | None = None) -> list[str]:
        if when is not None:
            lines = [f'if [ "${{{_var(when)}:-no}}" = yes ]; then', *(f"  {x}" for x in lines), "fi"]
        if role == "main":
            return lines
        self.roles.add(role)
        body = [x.replace('"$HOST"', '"$H"') for x in lines]
        return [f"for H in ${_role_var(role)}; do", *(f"  {x}" for x in body), "done"]

    def _ssh(self, command: Command, stdin: bool) -> list[str]:
        """Lines that run ``command`` on ``$HOST``; the last one is the ``ssh`` itself. Run-time
        values (``{{run}}``, captured ones) are filled in by bash as the interpreter fills them."""
        for name, secret in command.secrets:
            self.secrets.setdefault(secret.env, f"{name} of the host's programs")
        line = remote_line(command, self.sudo)
        names = sorted(set(_VALUE.findall(line)))
        flag = "" if stdin else " -n"
        if not names:
            return [f'ssh{flag} "$HOST" {sh(line)}']
        out = [f"c={sh(line)}"]
        for name in names:
            self.values.add(name)
            source = "$RUN" if name == "run" else f"${_var(name)}"
            out.append(f"c=${{c//'{{{{{name}}}}}'/{source}}}")
        return [*out, f'ssh{flag} "$HOST" "$c"']

    def _secret_prefix(self, command: Command) -> str:
        """``printf`` (a bash builtin: no argv) of each secret, one line each, for the remote reads."""
        if not command.secrets:
            return ""
        names = " ".join(f'"${secret.env}"' for _, secret in command.secrets)
        return f"printf '%s\\n' {names}"

    def _exec(self, op: ops.Exec) -> list[str]:
        fed = bool(op.command.secrets) or op.stdin is not None
        run = self._ssh(op.command, stdin=fed)
        *before, ssh = run
        lines = [f"# {op.what}: $ {op.command.masked()}", *before]
        if fed:
            feed = [p for p in (self._secret_prefix(op.command),) if p]
            if op.stdin is not None:
                # the here-document's end alone on its line: `EOF; }` would not end it
                end = "RECIPES_EOF"
                feed.append(f"cat <<'{end}'\n{op.stdin.rstrip(chr(10))}\n{end}\n")
                ssh = f"{{ {'; '.join(feed)}}} | {ssh}"
            else:
                ssh = f"{feed[0]} | {ssh}"
        if op.sets:
            lines.append(f"if {ssh}; then {_var(op.sets)}=yes; else {_var(op.sets)}=no; fi")
        elif op.capture:
            self.values.add(op.capture)
            note = "  # a secret: kept in this shell only, never printed" if op.secret else ""
            lines.append(f"{_var(op.capture)}=$({ssh}){note}")
            if op.secret:
                lines.append(
                    f'[ -n "${_var(op.capture)}" ] || '
                    f"{{ echo {sh(f'{op.what} printed nothing')} >&2; exit 1; }}"
                )
        elif op.ok_exits is None:
            lines.append(f"{ssh} || true")
        elif op.ok_exits != (0,):
            ok = "|".join(str(x) for x in op.ok_exits)
            lines.append(f"{ssh} || case $? in {ok}) ;; *) exit 1;; esac")
        else:
            lines.append(ssh)
        return lines

    def _undo(self, op: ops.Undo) -> list[str]:
        """Pushed on the list the exit trap runs; run-time values filled in now, as the
        interpreter fills them when it registers the undo."""
        *fill, ssh = self._ssh(op.command, stdin=False)
        cond = "" if op.on == "always" else '[ "$rc" -eq 0 ] || '
        if fill:
            push = [*fill, f'undo "$(printf \'%sssh -n "$HOST" %q\' {sh(cond)} "$c")"']
        else:
            push = [f"undo {sh(cond + ssh)}"]
        where = "always" if op.on == "always" else "only if this script fails"
        if op.role != "main":
            push = [f"# (on every {op.role} host: {_role_var(op.role)})", *push]
        return [f"# undo ({where}): {op.what}", *self._when(op.when, push)]

    def _when(self, when: str | None, lines: list[str]) -> list[str]:
        if when is None:
            return lines
        return [f'if [ "${{{_var(when)}:-no}}" = yes ]; then', *(f"  {x}" for x in lines), "fi"]

    # ---- transfers

    def _transfer(self, op: ops.Transfer, checks: list[str]) -> list[str]:
        src, dst = op.src, op.dst
        if isinstance(src, ops.SnapshotObject) and isinstance(dst, ops.HostCommand):
            return self._on_hosts(dst.role, self._into_host(op, src, dst, checks))
        if isinstance(src, ops.KeyStore) and isinstance(dst, ops.HostCommand):
            self.key_store = True
            local = self._key_file(src)
            decrypt = f'age -d -i "$IDENTITY" {local} | zstd -d'
            return self._on_hosts(dst.role, [f"# {op.what}", *self._pipe(decrypt, dst.command)])
        if isinstance(src, ops.SnapshotObject) and isinstance(dst, ops.Bucket):
            return self._into_bucket(op, src, dst)
        if isinstance(src, ops.DuplicityCollection) and isinstance(dst, ops.HostCommand):
            return self._on_hosts(dst.role, self._duplicity(op, src, dst))
        return [f"# {op.what}: {op.src.describe()} -> {op.dst.describe()} (no standard-tool way here)"]

    def _key_file(self, src: ops.KeyStore) -> str:
        if self.manifest is not None:
            n = next((i for i, o in enumerate(self.manifest.external) if o.name == src.name), None)
            if n is not None:
                return f'"$WORK/key-{n}.zst.age"'
        return f'"$KEY_STORE/{src.name}.zst.age"'

    def _objects(self, src: ops.SnapshotObject) -> list[tuple[str, mf.Manifest | None]]:
        """Where each stored copy of ``src`` is read from, full first for a chain."""
        if self.manifest is None:
            return [(f'"$SNAPSHOT/{src.name}.zst.age"', None)]
        last = len(self.chain) - 1
        out: list[tuple[str, mf.Manifest | None]] = []
        for i, m in enumerate(self.chain):
            if not src.chain and i != last:
                continue
            obj = m.object(src.name)
            path = obj.path if obj is not None else f"{src.name}.zst.age"
            out.append((f'"$S{i}/{path}"', m))
        return out

    def _into_host(
        self, op: ops.Transfer, src: ops.SnapshotObject, dst: ops.HostCommand, checks: list[str]
    ) -> list[str]:
        lines = [f"# {op.what}"]
        for path, m in self._objects(src):
            command = dst.command
            if m is not None and m.level > 0 and dst.incremental is not None:
                command = dst.incremental
            if m is not None and src.chain:
                lines.append(f"# {src.name} of {m.snapshot} (level {m.level})")
            lines += self._pipe(f'age -d -i "$IDENTITY" {path} | zstd -d', command, dst)
        if self.manifest is None and src.chain and dst.incremental is not None:
            lines.append(
                "# an incremental snapshot: render with --snapshot; each incremental is extracted with "
                "--listed-incremental=/dev/null"
            )
        if dst.check is not None:
            lines += self._ssh(dst.check, stdin=False)
            checks.append(f"the check after it exits 0 (`{dst.check.masked()}`)")
        return lines

    def _pipe(self, source: str, command: Command, dst: ops.HostCommand | None = None) -> list[str]:
        """``source``'s stdout into ``command`` on the host, secrets first (as ``wire`` does);
        stderr lines matching the sink's error pattern fail it as they fail ``recipes restore``."""
        *before, ssh = self._ssh(command, stdin=True)
        prefix = self._secret_prefix(command)
        feed = f"{{ {prefix}; {source}; }}" if prefix else source
        lines = [f"# $ {command.masked()}", *before]
        if dst is None or not dst.error_pattern:
            return [*lines, f"{feed} | {ssh}"]
        err = '"$WORK/stderr"'
        benign = "".join(f" | grep -vE -- {sh(b)}" for b in dst.benign)
        return [
            *lines,
            f"{feed} | {ssh} 2> {err} || {{ cat {err} >&2; exit 1; }}",
            f"cat {err} >&2",
            f"if grep -E -- {sh(dst.error_pattern)} {err}{benign} >&2; then "
            "echo 'refusing to go on: the errors above' >&2; exit 1; fi",
        ]

    def _into_bucket(self, op: ops.Transfer, src: ops.SnapshotObject, dst: ops.Bucket) -> list[str]:
        access, secret = (_var(k) for k in dst.key_values)
        env = (
            f"RCLONE_CONFIG_GW_TYPE=s3 RCLONE_CONFIG_GW_PROVIDER=Other "
            f"RCLONE_CONFIG_GW_ENDPOINT={sh(dst.gateway)} "
            f'RCLONE_CONFIG_GW_ACCESS_KEY_ID="${access}" RCLONE_CONFIG_GW_SECRET_ACCESS_KEY="${secret}"'
        )
        d = f'"$WORK/bucket-{dst.bucket}"'
        (path, m), *_ = self._objects(src)
        lines = [f"# {op.what}: the stored tar's members are the objects (keys in memory only)"]
        lines.append(f"mkdir -p {d}")
        lines.append(
            "# --xattrs: each object's content type and metadata (PAX SCHILY.xattr.user.s3.*) "
            "become the files' user.s3.* xattrs"
        )
        untar = f"tar -x --xattrs --xattrs-include={sh(S3_XATTRS)} -C {d}"
        lines.append(f'age -d -i "$IDENTITY" {path} | zstd -d | {untar}')
        if m is not None and isinstance((o := m.object(src.name)) and o.facts.get("objects"), int):
            count = o.facts["objects"] if o is not None else 0
            lines.append(
                f'test "$(find {d} -type f | wc -l)" -eq {count} || '
                f"{{ echo {sh(f'the snapshot recorded {count} objects of s3://{dst.bucket}')} >&2; exit 1; }}"
            )
        if not self.mapper:
            self.mapper = True
            lines += [
                "# rclone -M reads the user.s3.* xattrs as metadata s3.*: this mapper makes them the S3",
                "# content type and x-amz-meta-* again, and drops the local file's own (mode, times, owner)",
                f"cat > \"$WORK/{MAPPER}\" <<'EOF'",
                *S3_MAPPER,
                "EOF",
            ]
        if dst.create:
            lines.append("# create the bucket unless it exists (an existing one is fine)")
            lines.append(
                f"{env} rclone lsd gw:{dst.bucket} >/dev/null 2>&1 || {env} rclone mkdir gw:{dst.bucket}"
            )
        lines.append(f'{env} rclone copy -M --metadata-mapper "sed -zEf $WORK/{MAPPER}" {d} gw:{dst.bucket}')
        return lines

    def _duplicity(self, op: ops.Transfer, src: ops.DuplicityCollection, dst: ops.HostCommand) -> list[str]:
        """duplicity + GnuPG on this machine, in a private GNUPGHOME; the passphrase and S3 keys
        reach duplicity's environment only (``VAR="$OPERATOR_VAR" duplicity ...``, never argv)."""
        from recipes import duplicity

        self.secrets.setdefault(src.passphrase_env, "the GnuPG key's passphrase")
        env = [f'PASSPHRASE="${src.passphrase_env}"']
        if src.aws_key_env:
            self.secrets.setdefault(src.aws_key_env, "the collection's S3 access key")
            env.append(f'AWS_ACCESS_KEY_ID="${src.aws_key_env}"')
        if src.aws_secret_env:
            self.secrets.setdefault(src.aws_secret_env, "the collection's S3 secret key")
            env.append(f'AWS_SECRET_ACCESS_KEY="${src.aws_secret_env}"')
        restored = f"$D/{duplicity.RESTORED}"
        argv = " ".join(
            f'"{w}"' if w.startswith("$D") else sh(w)
            for w in duplicity.restore_argv(src, restored, work="$D")
        )
        gnupg = 'GNUPGHOME="$G"'
        lines = [
            f"# {op.what}: duplicity + GnuPG here, in a private GNUPGHOME (your ~/.gnupg is never used)",
            'D="$WORK/dup" && mkdir -m 700 "$D" "$D/cache" "$D/tmp"',
            "# a short path: gpg-agent's sockets live in GNUPGHOME",
            f"G=$(mktemp -d {duplicity.SHORT_TMP}/{duplicity.GNUPG_PREFIX}XXXXXX)",
            f"undo '{gnupg} gpgconf --kill all; rm -rf \"$G\"'",
            f"{gnupg} gpg --batch --import {sh(src.gpg_key_file)}",
            f"{gnupg} {' '.join(env)} {argv}",
        ]
        if src.unpack == duplicity.UNPACK_DUMPS:
            return lines + self._dumps(src, dst, restored)
        return [
            *lines,
            f'test -d "{restored}" || {{ echo "duplicity restored a file, not a directory" >&2; exit 1; }}',
            *self._pipe(f'tar -c --format=gnu --numeric-owner -C "{restored}" .', dst.command, dst),
        ]

    def _dumps(self, src: ops.DuplicityCollection, dst: ops.HostCommand, restored: str) -> list[str]:
        """automysqlbackup's ``latest/``: the newest dump per database (daily before weekly before
        monthly at the same time), each into ``dst`` after CREATE DATABASE / USE (its own USE
        line wins), as ``recipes.duplicity`` does."""
        from recipes import duplicity

        name = duplicity.DUMP_NAME.pattern
        ere = name.replace("(?P<period>", "(").replace("(?P<db>", "(").replace("(?P<date>", "(")
        ere = ere.replace("(?P<time>", "(").replace("(?P<bz2>", "(").replace(".+?", ".+").replace("(?:", "(")
        ere = ere.replace(r"\d", "[0-9]")
        rank = " ".join(f'r["{k}"] = {v};' for k, v in duplicity._PREFER.items())
        sed = sh(f"s/{ere}/\\2 \\3_\\4 \\1 &/p")
        *before, ssh = self._ssh(dst.command, stdin=True)
        prefix = self._secret_prefix(dst.command)
        head = (
            '{ case "$f" in *.bz2) bunzip2 -c -- "$f";; *) cat -- "$f";; esac; } | head -c 65536 '
            "| grep -m 1 -oE '^USE `([^`]|``)+`;' | sed -E 's/^USE `(.*)`;$/\\1/; s/``/`/g' || true"
        )
        body = (
            'printf \'CREATE DATABASE IF NOT EXISTS `%s`;\\nUSE `%s`;\\n\' "$q" "$q"; '
            'case "$f" in *.bz2) bunzip2 -c -- "$f";; *) cat -- "$f";; esac'
        )
        feed = f"{{ {prefix + '; ' if prefix else ''}{body}; }}"
        lines = [
            f'mkdir "$D/x" && tar -x -C "$D/x" -f "{restored}" && cd "$D/x/latest"',
            "# the newest dump of each database: by date, time, then daily > weekly > monthly",
            f"chosen=$(ls -1 | sed -nE {sed} | awk '{{ {rank} print $1, $2 \"_\" r[$3], $4 }}' "
            "| sort -k1,1 -k2,2r | awk '!seen[$1]++ { print $1, $3 }')",
            '[ -n "$chosen" ] || { echo "no automysqlbackup dump in latest/" >&2; exit 1; }',
        ]
        for db in src.databases:
            lines.append(
                f'grep -q ^{sh(db + " ")} <<<"$chosen" || '
                f"{{ echo {sh(f'no dump of {db} in latest/')} >&2; exit 1; }}"
            )
        if src.databases:
            pattern = "|".join(re.escape(d) for d in src.databases)
            lines.append(f'chosen=$(grep -E {sh(f"^({pattern}) ")} <<<"$chosen")')
        lines += [
            "while read -r db f; do",
            f"  q=$({head})",
            "  q=${q:-$db}",
            '  echo "load $f into database $q"',
            *(f"  {x}" for x in before),
            f'  {feed} | {ssh} 2> "$WORK/stderr" || {{ cat "$WORK/stderr" >&2; exit 1; }}',
            '  cat "$WORK/stderr" >&2',
        ]
        if dst.error_pattern:
            lines.append(
                f'  if grep -E -- {sh(dst.error_pattern)} "$WORK/stderr" >&2; then '
                'echo "load $f failed" >&2; exit 1; fi'
            )
        return [*lines, 'done <<<"$chosen"', 'cd "$WORK"']

    def _done(self) -> Block:
        return Block(
            "Done",
            'echo "break-glass restore of ' + self.plan.recipe + ' onto $HOST finished"',
            "the line above; the undos (starting what was stopped) ran as the script ended",
        )


def _role_var(role: str) -> str:
    return "HOSTS_" + re.sub(r"[^A-Za-z0-9]", "_", role).upper()


def _safe(name: str) -> str:
    from recipes.repository import safe_name

    return safe_name(name)
