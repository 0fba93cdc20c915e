"""The dead-man's switch: a guard process on the host that holds the host's undo list and runs it
when the controller falls silent, so a SIGKILLed controller or a lost network cannot leave an
application stopped (DESIGN.md principle 9).

How it works (all of it bash and /proc on the host: hosts have no Python guarantee):

* ``Guard.arm`` opens one SSH session (the *feeder*). It makes a private 0700 directory under
  ``$TMPDIR``, starts the *watchdog* detached from the session (``setsid``, stdin/stdout on
  /dev/null, HUP and PIPE ignored, so sshd closing the channel does not reach it), and then
  relays the controller's lines: ``beat`` (writes the host's clock into ``beat``, answers
  ``ack``), ``push ID B64`` (stores one undo command, answers ``pushed ID`` once it is on disk)
  and ``disarm``.
* The watchdog wakes every second. When the newest beat is ``deadman`` seconds old (a SIGKILLed
  controller, a dropped connection, or a network that is merely frozen: no EOF is needed), it
  *fires*: it kills what the controller started on the host, then runs every undo entry nobody
  claimed yet, newest first, and records ``fired/ID`` (time and exit status) for the controller.
* Each entry is run at most once: whoever runs it first claims it by renaming it (an atomic
  ``rename(2)``): the watchdog into ``guard/``, the controller (``Guard.claimed``) into ``ctl/``.
  A controller that finds an entry already taken by the watchdog reports when it was run.
* "What the controller started": every SSH channel's command is a session leader under this
  connection's sshd (sshd calls setsid for it); the watchdog records those session ids every
  second, and firing sends TERM (KILL after 2 s) to every process still in one of them, so a hung
  dump does not survive its controller even after it was re-parented to init. Daemons that an
  undo started are safe: a proper daemon makes its own session, and the session of every undo
  command the controller ran is recorded as spared. While the guard is armed the controller
  also asks the feeder to record the sessions right after starting each command (``Tracked``),
  so even a command killed a moment after it started is covered. Cost: nothing is added to the
  bulk commands themselves (the bytes and the remote pipeline are unchanged), one line round
  trip per command started (0.2 ms on loopback, one RTT elsewhere; a new session costs ~230 ms
  there), and arming is one session (~0.3 s) before the first stop, so outside the downtime.
  ``--host local`` has no sshd, so nothing is killed there (the undo still runs).
* ``disarm`` (after the controller's own undo) stops the watchdog, reports what it fired, and
  removes the directory. A watchdog that fired and then hears nothing for ``2 x deadman`` more
  seconds removes its directory itself, so nothing is left on the host.

Undo commands never carry secrets to the guard: ``push`` refuses a Command with secrets (they
would have to be stored on the host's disk); nothing is stopped when that happens.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import queue
import shlex
import threading
import time
from collections.abc import Callable

import attrs

from recipes.errors import HostError, StepFailed
from recipes.hosts import Host, LocalHost, Process, key_values, run
from recipes.model import Command

log = logging.getLogger("recipes")

# Seconds of silence from the controller after which a host's guard runs its undo list.
DEADMAN_SECONDS = 60.0
# Exit statuses of a claimed undo command (see ``Guard.claimed``).
TAKEN_BY_GUARD = 97
GUARD_GONE = 98

# Record the sessions of this connection's sshd (each channel's command leads one) in
# $d/sessions: the feeder on request (``track``), the watchdog every second. Each file holds its
# leader's start time (/proc/PID/stat field 22): a session number is free again once every
# process of it is gone, and a later, unrelated session with that number must not be taken
# for this one (hosts with pid_max 32768 wrap within minutes when busy).
TRACK = r"""
kids_of_sshd() {
  # the pids of this connection's sshd's children, into the caller's $kids
  local f l k
  if [ -r "/proc/$sshd/task/$sshd/children" ]; then
    read -r kids < "/proc/$sshd/task/$sshd/children" || :  # it ends without a newline
  elif [ -d "/proc/$sshd" ]; then
    for f in /proc/[0-9]*/stat; do
      read -r l 2>/dev/null < "$f" || continue
      l=${l##*) }; set -- $l
      [ "$2" = "$sshd" ] && k=${f#/proc/} && kids="$kids ${k%/stat}"
    done
  fi
}
track() {
  [ "$sshd" -gt 1 ] || return 0
  local kids="" k l st old
  kids_of_sshd
  for k in $kids; do
    # a child of this connection's sshd is the run's: (re)record it, atomically ("-": its
    # leader was gone already, so only members remain, and they hold the number)
    st=-
    if read -r l 2>/dev/null < "/proc/$k/stat"; then l=${l##*) }; set -- $l; st=${20}; fi
    old=""; [ -e "$d/sessions/$k" ] && read -r old 2>/dev/null < "$d/sessions/$k"
    [ "$old" = "$st" ] && continue
    # gone between the listing and its stat: what was recorded of it stays
    [ "$st" = - ] && [ -n "$old" ] && continue
    echo "$st" > "$d/sessions/.$k.$$" && mv -f -- "$d/sessions/.$k.$$" "$d/sessions/$k"
  done
}
"""

# TERM (KILL after 2 s) to every process in a recorded session that is not spared (an undo the
# controller ran, the feeder's own session): the watchdog when it fires, the feeder on ``abandon``.
KILL = r"""
spare() {
  # spare session $1 from kill_sessions, keyed like sessions/ by its leader's start time
  local n=$1 l="" st=-
  if read -r l 2>/dev/null < "/proc/$n/stat"; then l=${l##*) }; set -- $l; st=${20}; fi
  echo "$st" > "$d/spare/.$n.$$" && mv -f -- "$d/spare/.$n.$$" "$d/spare/$n"
}
kill_sessions() {
  local f l p s want sp pids="" i
  for f in /proc/[0-9]*/stat; do
    read -r l 2>/dev/null < "$f" || continue
    p=${f#/proc/}; p=${p%/stat}
    [ "$p" = "$$" ] && continue
    l=${l##*) }; set -- $l; s=$4
    [ -e "$d/sessions/$s" ] || continue
    # a leader alive under that number must be the one recorded (else the number was reused);
    # a session whose leader is gone still holds its number, so its members are the run's
    want=""; read -r want 2>/dev/null < "$d/sessions/$s"
    if read -r l 2>/dev/null < "/proc/$s/stat"; then
      l=${l##*) }; set -- $l
      [ -n "$want" ] && [ "$want" = "${20}" ] || continue
    fi
    # spared (an undo the controller runs, the feeder): the session recorded, not a later one
    # with its number ("-": its leader was gone when tracked, so it cannot be told apart)
    if [ -e "$d/spare/$s" ]; then
      sp=""; read -r sp 2>/dev/null < "$d/spare/$s"
      [ "$want" = - ] || [ "$sp" = "$want" ] && continue
    fi
    pids="$pids $p"
  done
  [ -n "$pids" ] || return 0
  kill -TERM $pids 2>/dev/null
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    l=""
    for p in $pids; do kill -0 "$p" 2>/dev/null && l="$l $p"; done
    pids=$l
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  kill -KILL $pids 2>/dev/null
  return 0
}
"""

# The watchdog: $1 directory, $2 deadman seconds, $3 this connection's sshd pid (0: none).
WATCHDOG = r"""
d=$1 deadman=$2 sshd=$3
trap '' HUP PIPE INT
export TZ=UTC
cd / || exit 1
echo "$$" > "$d/pid"
killed=0 fired_at=0
fire() {
  local id rc when
  for id in $(ls -r "$d/undo"); do
    case $id in *[!0-9]*) continue;; esac
    mv -- "$d/undo/$id" "$d/guard/$id" 2>/dev/null || continue
    printf -v when '%(%Y-%m-%dT%H:%M:%SZ)T' -1
    bash "$d/guard/$id" < /dev/null > /dev/null 2> "$d/guard/$id.err"; rc=$?
    echo "$when exit=$rc" > "$d/fired/.$id" && mv -f "$d/fired/.$id" "$d/fired/$id"
  done
}
while [ -d "$d" ] && [ ! -e "$d/disarming" ]; do
  track
  t=""; read -r t 2>/dev/null < "$d/beat"
  printf -v now '%(%s)T' -1
  case $t in ""|*[!0-9]*) ;; *)
    if [ $((now - t)) -ge "$deadman" ]; then
      [ "$killed" = 1 ] || { kill_sessions; killed=1; }
      fire
      [ "$fired_at" -gt 0 ] || fired_at=$now
      [ $((now - t)) -ge $((3 * deadman)) ] && { rm -rf -- "$d"; exit 0; }
    fi;;
  esac
  sleep 1
done
"""

# Disarming (a function of $d): stop the watchdog, print what it fired, remove the directory.
DISARM = r"""
disarm() {
  local wd="" f r
  [ -d "$d" ] || { echo gone; return 0; }
  : > "$d/disarming"
  read -r wd < "$d/pid"
  while [ -n "$wd" ] && kill -0 "$wd" 2>/dev/null; do sleep 0.1; done
  for f in "$d"/fired/*; do
    [ -f "$f" ] && { read -r r < "$f"; echo "fired ${f##*/} $r"; }
  done
  rm -rf -- "$d"; echo disarmed
}
"""

# The feeder: one session that arms the watchdog and relays the controller's lines to it.
FEEDER = r"""
unset TMOUT
umask 077
d=$(mktemp -d "${TMPDIR:-/tmp}/recipes-guard.XXXXXXXX") || exit 1
mkdir "$d/undo" "$d/ctl" "$d/guard" "$d/fired" "$d/spare" "$d/sessions" || exit 1
s=0 p=$$ own=$$
# over SSH: find this connection's sshd (its sessions are the run's); --host local has none, and
# an sshd above the controller there is the operator's own login, not the run's
[ "$over_ssh" = 1 ] || p=0
while [ "$p" -gt 1 ]; do
  c=""; read -r c 2>/dev/null < "/proc/$p/comm"
  case $c in sshd|sshd-session) s=$p; break;; esac
  pp=1
  while read -r k v; do [ "$k" = PPid: ] && { pp=$v; break; }; done 2>/dev/null < "/proc/$p/status"
  own=$p p=$pp
done
printf '%(%s)T\n' -1 > "$d/beat"
sshd=$s
setsid bash -c "$watchdog" recipes-guard "$d" "$deadman" "$s" < /dev/null > /dev/null 2>&1 &
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do [ -s "$d/pid" ] && break; sleep 0.05; done
read -r wd < "$d/pid" || { rm -rf -- "$d"; echo "the watchdog did not start" >&2; exit 1; }
printf 'dir=%s\nwatchdog=%s\nsshd=%s\nready\n' "$d" "$wd" "$s"
while IFS= read -r line; do
  case $line in
    beat) [ -d "$d" ] && printf '%(%s)T\n' -1 > "$d/beat"; echo ack;;
    track) [ -d "$d/sessions" ] && track; echo tracked;;
    push\ *)
      set -f; set -- $line; set +f
      case $2 in ""|*[!0-9]*) echo "refused $2"; continue;; esac
      if [ -d "$d/undo" ] && printf '%s' "$3" | base64 -d > "$d/undo/.$2" \
          && mv -f -- "$d/undo/.$2" "$d/undo/$2"; then echo "pushed $2"; else echo "refused $2"; fi;;
    disarm) disarm; exit 0;;
    withdraw\ *)
      # an undo not needed after all (the run succeeded): the watchdog must never run it
      set -f; set -- $line; set +f
      case $2 in ""|*[!0-9]*) echo "refused $2"; continue;; esac
      if mv -- "$d/undo/$2" "$d/ctl/$2" 2>/dev/null || [ -e "$d/ctl/$2" ]; then echo "withdrawn $2"
      else echo "taken $2"; fi;;
    abandon)
      # the controller gave up on the run (interrupted, timed out): what it started on this
      # host and still runs (a hung stop, a dump) ends before its undo starts anything again
      # (its own session is spared: the one sshd made for it, and sudo's own if it made one)
      if [ -d "$d/spare" ]; then
        spare "$own"
        read -r -a me 2>/dev/null < /proc/$$/stat && [ -n "${me[5]}" ] && spare "${me[5]}"
        track; kill_sessions
      fi
      echo abandoned;;
    *) echo "unknown";;
  esac
done
exit 0
"""


@attrs.frozen
class Undo:
    """One undo command and what it undoes, in words (``start svc``, ``drop snapshot tank@x``)."""

    what: str
    command: Command
    state: str = ""
    """The state while it has not run, for error lines (``svc is still stopped``)."""


@attrs.frozen
class Entry:
    """An undo pushed to a host's guard: its id there."""

    id: int
    undo: Undo


@attrs.frozen
class Fired:
    """An undo the guard ran itself: entry id, when (UTC) and its exit status."""

    id: int
    when: str
    status: str


def feeder_script(deadman: float, over_ssh: bool = True) -> str:
    """The feeder session's script with the watchdog and the deadman (whole seconds) filled in;
    ``over_ssh=False`` (``--host local``): no sshd's sessions are recorded, so none are killed."""
    shared = TRACK.strip() + "\n" + KILL.strip() + "\n"
    watchdog = shared + WATCHDOG.strip()
    head = f"watchdog={shlex.quote(watchdog)}; deadman={max(1, round(deadman))}; over_ssh={int(over_ssh)}\n"
    return head + shared + DISARM.strip() + "\n" + FEEDER.strip()


class Guard:
    """The controller's half of one host's dead-man's switch (see the module's docstring)."""

    def __init__(self, host: Host, proc: Process, facts: dict[str, str], deadman: float) -> None:
        self.host = host
        self.proc = proc
        self.dir = facts["dir"]
        self.deadman = deadman
        self.interval = max(deadman / 4, 0.2)
        self.lost = threading.Event()
        self.closed = threading.Event()
        self.on_lost: Callable[[], None] | None = None
        self._answers: queue.Queue[str] = queue.Queue()
        self._write_lock = threading.Lock()
        # One question at a time: a ``track`` from another thread's new command must not take
        # an answer to ``disarm`` (or ``push``) meant for this one, nor be asked once disarming began.
        self._ask_lock = threading.Lock()
        self._sent_unacked: float | None = None
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, name=f"guard-read-{host.name}", daemon=True)
        self._beater = threading.Thread(target=self._beat, name=f"guard-beat-{host.name}", daemon=True)
        self._reader.start()
        self._beater.start()

    @classmethod
    def arm(cls, host: Host, deadman: float) -> Guard:
        """Start the guard on ``host``; returns once its watchdog runs."""
        proc = host.start(Command(feeder_script(deadman, over_ssh=not isinstance(host, LocalHost))))
        try:
            buf = b""
            while not buf.endswith(b"ready\n"):
                chunk = proc.read(1 << 16)
                if not chunk:
                    break
                buf += chunk
            facts = key_values(buf)
            if not facts.get("dir", "").startswith("/") or not buf.endswith(b"ready\n"):
                status = proc.wait(timeout=30)
                raise StepFailed(
                    f"could not arm the dead-man's switch on {host.name} (exit {status}): "
                    f"{proc.stderr().strip() or 'no message'}; nothing was stopped"
                )
        except BaseException:
            proc.kill()
            raise
        guard = cls(host, proc, facts, deadman)
        log.info(
            "guard armed on %s (%s): it undoes what was stopped if the controller is silent for %gs",
            host.name,
            guard.dir,
            deadman,
        )
        return guard

    def _send(self, line: str) -> None:
        with self._write_lock:
            self.proc.write(line.encode() + b"\n")

    def _read(self) -> None:
        buf = b""
        try:
            while chunk := self.proc.read(1 << 16):
                buf += chunk
                *lines, rest = buf.split(b"\n")
                buf = rest
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    if line == "ack":
                        self._sent_unacked = None
                    else:
                        self._answers.put(line)
        except Exception as exc:  # the connection went; the heartbeat notices the silence
            log.debug("guard session on %s ended: %s", self.host.name, exc)
        self._answers.put("")

    def _beat(self) -> None:
        """Every deadman/4 s: a beat; a beat unanswered for ``deadman`` s means the host is lost."""
        while not self.closed.wait(self.interval):
            sent = self._sent_unacked
            if sent is not None and time.monotonic() - sent >= self.deadman:
                self._lose(f"no answer from its guard for {self.deadman:g}s")
                return
            try:
                self.send_beat()
            except Exception as exc:
                self._lose(f"cannot reach its guard: {exc}")
                return

    def send_beat(self) -> None:
        """One heartbeat (tests replace this to let the guard fire)."""
        if self._sent_unacked is None:
            self._sent_unacked = time.monotonic()
        self._send("beat")

    def _lose(self, why: str) -> None:
        if self.closed.is_set() or self.lost.is_set():
            return
        log.error("lost %s: %s; abandoning the run", self.host.name, why)
        self.lost.set()
        if self.on_lost is not None:
            with contextlib.suppress(Exception):
                self.on_lost()

    def _answer(self, what: str, *wanted: str) -> str:
        """The feeder's next line that starts with one of ``wanted`` (or says ``unknown``); lines
        left over from a question an interrupt cut short (a ``tracked``, an ``abandoned``) are
        dropped, so no answer is ever taken for another question's."""
        deadline = time.monotonic() + max(self.deadman, 5.0)
        while True:
            try:
                line = self._answers.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise HostError(f"the guard on {self.host.name} did not answer ({what})") from None
            if not line:
                self._answers.put("")  # the session ended: so it stays for every later question
                raise HostError(f"the guard's session on {self.host.name} ended ({what})")
            if line == "unknown" or line.startswith(wanted):
                return line
            log.debug("guard on %s: dropped %r, an answer to an earlier question", self.host.name, line)

    def push(self, undo: Undo) -> Entry:
        """Hand one undo command to the guard; returns once it is on the host's disk."""
        if undo.command.secrets:
            names = ", ".join(name for name, _ in undo.command.secrets)
            raise StepFailed(
                f"{undo.what} on {self.host.name} needs secrets ({names}) that the host's guard would "
                "have to keep on disk: the dead-man's switch refuses it, so nothing was stopped"
            )
        self._next_id += 1
        entry = Entry(self._next_id, undo)
        line, _ = undo.command.wire(sudo=False)
        payload = base64.b64encode(line.encode()).decode()
        with self._ask_lock:
            self._send(f"push {entry.id:06d} {payload}")
            answer = self._answer(f"push {undo.what}", f"pushed {entry.id:06d}", f"refused {entry.id:06d}")
        if answer != f"pushed {entry.id:06d}":
            raise StepFailed(
                f"the guard on {self.host.name} did not take the undo of {undo.what} ({answer}): "
                "nothing was stopped"
            )
        return entry

    def _ask_open(self, line: str, what: str, *wanted: str) -> str | None:
        """Send ``line`` and return its answer; None (nothing sent) once disarming began."""
        with self._ask_lock:
            if self.closed.is_set():
                return None
            self._send(line)
            return self._answer(what, *wanted)

    def track(self) -> None:
        """Record the sessions of this connection now (a command just started): if the controller
        vanishes from here on, firing kills that command too. Nothing once disarming began."""
        answer = self._ask_open("track", "track", "tracked")
        if answer is not None and answer != "tracked":
            raise HostError(f"the guard on {self.host.name} did not record the new command ({answer})")

    def withdraw(self, entry: Entry) -> bool:
        """Take an undo back from the guard without running it (a failure-only one after a
        success): True once the watchdog can no longer run it, False when it ran it already."""
        i = f"{entry.id:06d}"
        answers = (f"withdrawn {i}", f"taken {i}", f"refused {i}")
        answer = self._ask_open(f"withdraw {i}", f"withdraw {entry.undo.what}", *answers)
        if answer is None:
            raise HostError(f"the guard on {self.host.name} is closed")
        if answer.startswith("refused") or answer == "unknown":
            raise HostError(f"the guard on {self.host.name} did not take back {entry.undo.what} ({answer})")
        return answer == f"withdrawn {i}"

    def abandon(self) -> None:
        """End what the controller started on the host and still runs (TERM, KILL after 2 s),
        sparing the guard and the undos: the run was given up, so a hung stop or dump must not
        outlive it. Returns once the host says it is done."""
        answer = self._ask_open("abandon", "abandon", "abandoned")
        if answer is not None and answer != "abandoned":
            raise HostError(f"the guard on {self.host.name} did not end the run's commands ({answer})")

    def claimed(self, entry: Entry) -> Command:
        """The entry's command preceded by its claim: it runs only if the guard has not run it.

        Exits ``TAKEN_BY_GUARD`` (printing the guard's record) when the watchdog ran it already,
        ``GUARD_GONE`` when the guard's directory is gone. The session of the command is spared by
        the watchdog's kill, so a service it starts stays up.
        """
        d = shlex.quote(self.dir)
        i = f"{entry.id:06d}"
        claim = (
            # spared first, by its session's leader's start time as kill_sessions matches it: a
            # guard firing between the claim and the record would kill a claimed undo
            # (and its parent's, sudo's, when that is another session, as ``abandon`` spares it)
            "for q in $$ $PPID; do read -r -a s 2>/dev/null < /proc/$q/stat || continue; "
            'l=""; [ -n "${s[5]}" ] && read -r l 2>/dev/null < /proc/"${s[5]}"/stat; '
            "l=${l##*) }; a=($l); "
            f'[ -n "${{s[5]}}" ] && echo "${{a[19]:--}}" 2>/dev/null > {d}/spare/."${{s[5]}}".$$ '
            f'&& mv -f -- {d}/spare/."${{s[5]}}".$$ {d}/spare/"${{s[5]}}" 2>/dev/null; done; '
            f"if mv -- {d}/undo/{i} {d}/ctl/{i} 2>/dev/null || [ -e {d}/ctl/{i} ]; then :; "
            f"elif [ -e {d}/guard/{i} ]; then cat {d}/fired/{i} 2>/dev/null; exit {TAKEN_BY_GUARD}; "
            f"else exit {GUARD_GONE}; fi; "
        )
        line, _ = entry.undo.command.wire(sudo=False)
        return Command(claim + line)

    def disarm(self) -> list[Fired]:
        """Stop the watchdog and remove its directory; returns what it had fired already.

        Through the feeder session while it lives, else (the connection dropped and came back)
        through a new session. Raises HostError when the host cannot be reached, StepFailed when
        the guard's directory is gone (it fired, waited, and cleaned up).
        """
        try:
            with self._ask_lock:  # after a track under way: its answer is its own
                self.closed.set()
                self._send("disarm")
                lines = []
                ends = ("disarmed", "gone")
                while (line := self._answer("disarm", "fired ", *ends)) not in ends:
                    lines.append(line)
                lines.append(line)
        except (HostError, StepFailed):  # the feeder is gone (the guard fired, or the connection went)
            self.proc.kill()
            script = f"d={shlex.quote(self.dir)}\n{DISARM.strip()}\ndisarm"
            result = run(self.host, Command(script))
            lines = result.stdout.decode("utf-8", "replace").splitlines()
        if "gone" in lines:
            raise StepFailed(
                f"the guard's directory {self.dir} on {self.host.name} is gone: it ran the undo list "
                "and gave up waiting for the controller, or the directory was removed"
            )
        if "disarmed" not in lines:
            raise HostError(f"the guard on {self.host.name} did not confirm it was disarmed")
        fired = []
        for line in lines:
            word, _, rest = line.partition(" ")
            if word == "fired":
                i, when, status = [*rest.split(" "), "", ""][:3]
                fired.append(Fired(int(i), when, status.removeprefix("exit=")))
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        return fired

    def close(self) -> None:
        """Stop beating and end the session without disarming: the guard fires in ``deadman`` s."""
        self.closed.set()
        self.proc.kill()


class Tracked:
    """A Host whose every new command is recorded with the guard before it is handed back (one
    short round trip per command, nothing per byte)."""

    def __init__(self, host: Host, guard: Guard) -> None:
        self.host = host
        self.guard = guard
        self.name = host.name

    def start(self, command: Command) -> Process:
        proc = self.host.start(command)
        if self.guard.closed.is_set():  # disarmed or given up: nothing more to record
            return proc
        try:
            self.guard.track()
        except BaseException:
            proc.kill()
            raise
        return proc

    def connect_soon(self) -> None:
        self.host.connect_soon()

    def close(self) -> None:
        self.host.close()
