"""Which ALG implementation is this?  Signatures as data, a scorer, two rules.

A signature (``signatures/NAME.toml``; installed, the package resource
``ftpprobe/signatures``) gives, for each reflector probe, the outcomes the
implementation produces, each with the source (file, function) it follows::

    name = "linux"
    title = "Linux nf_conntrack_ftp + nf_nat_ftp"
    family = "kernel ALG"
    advice = "..."
    [expect.alg-port-first]
    outcome = ["passed"]
    source = "net/netfilter/nf_conntrack_ftp.c help(): ..."

:func:`outcome` reduces one observation to a word of that vocabulary
(``None`` when it decides nothing: a single timeout, no report):

===================  =============================================================
word                 meaning
===================  =============================================================
rewritten            the address/port changed, the rest of the line as sent
normalised           rewritten, and case/spacing/line ending changed too (regenerated)
passed               arrived with the address as sent
mangled              other bytes changed, the address kept
stalled              no reply, proven: TCP_INFO dropped/held and the retry stalled too
closed               the connection was reset or closed on the line
rewritten-companion-lost  PORT rewritten, the command after it in the segment never arrived
intact / masked      SYST reply as the reflector wrote it / replaced by X characters
same / clamped / new the reflector's SYN MSS equals / is below / is above ours
===================  =============================================================

:func:`score` compares them with every signature.  Pure: no I/O except
reading the signature files once.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping

from ..errors import TargetError
from ..findings import Finding
from ..observations import (Observation, ReflectActiveObs, ReflectPassiveObs, ReflectReplyObs, ReflectVariantObs,
                            SynObs)
from . import Seen, rule
from .path import PORT_CANONICAL, fate, judge_pair

#: A match needs at least this share of the decided probes to agree ...
MATCH_SHARE = 0.85
#: ... at least this many agreeing probes ...
MATCH_AGREE = 5
#: ... and this lead in share over the next signature.
MATCH_LEAD = 0.1


@dataclass(frozen=True)
class Expectation:
    """One probe of a signature: the ``outcomes`` it accepts and the ``source`` (file, function)."""

    outcomes: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Signature:
    """One implementation: ``name`` (file stem), ``title``, ``family``
    (``kernel ALG``, ``proxy``, ``inspecting firewall``, ``none``), ``advice``,
    ``expect`` (probe name -> :class:`Expectation`)."""

    name: str
    title: str
    family: str
    advice: str
    expect: dict[str, Expectation] = field(default_factory=dict)


def signatures_dir() -> Path:
    """The installed resource ``ftpprobe/signatures`` or the checkout's ``signatures/``."""
    try:
        installed = resources.files("ftpprobe") / "signatures"
        if installed.is_dir():
            return Path(str(installed))
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent.parent / "signatures"


def parse_signature(text: str, where: str) -> Signature:
    """One signature file.  Raises :class:`TargetError` naming ``where`` and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{where}: {exc}") from None
    for key in ("name", "title", "family", "expect"):
        if key not in data:
            raise TargetError(f"{where}: missing key {key!r}")
    expect = {}
    for probe, table in data["expect"].items():
        outcomes = table.get("outcome")
        if not isinstance(outcomes, list) or not outcomes or not all(isinstance(o, str) for o in outcomes):
            raise TargetError(f"{where}: [expect.{probe}] needs outcome = [\"...\"]")
        if not table.get("source"):
            raise TargetError(f"{where}: [expect.{probe}] needs a source (file, function)")
        expect[probe] = Expectation(tuple(outcomes), table["source"])
    return Signature(data["name"], data["title"], data["family"], data.get("advice", ""), expect)


@functools.lru_cache(maxsize=4)
def load_signatures(directory: Path | None = None) -> tuple[Signature, ...]:
    """Every signature, sorted by name.  Raises :class:`TargetError` for a bad file."""
    directory = directory or signatures_dir()
    found = []
    for path in sorted(directory.glob("*.toml")):
        sig = parse_signature(path.read_text(encoding="utf-8"), str(path))
        if sig.name != path.stem:
            raise TargetError(f"{path}: name {sig.name!r} does not match the file name")
        found.append(sig)
    if not found:
        raise TargetError(f"no signature files (*.toml) in {directory}")
    return tuple(found)


# -- one observation to one word -------------------------------------------------------


def _line_word(obs: ReflectActiveObs) -> str | None:
    """What the path did to a PORT/EPRT line (see the module table)."""
    ex = obs.exchange
    if ex is None:
        return None
    if ex.outcome in ("reset", "closed"):
        return "closed"
    if ex.outcome == "timeout":
        how = ex.tcp_info.stall if ex.tcp_info is not None else "unknown"
        retried = obs.retry is not None and obs.retry.outcome == "timeout"
        return "stalled" if how != "unknown" and retried else None
    if ex.outcome != "reply" or obs.reflection is None:
        return None
    line = fate(obs)
    if line.kind == "rewritten" and line.comparison is not None:
        return "normalised" if line.comparison.canonical else "rewritten"
    if line.kept:
        return "passed"
    return "mangled" if line.kind == "mangled" else None


#: Three or more X in a row: Cisco ASA's mask of the SYST reply.
_MASK = re.compile(r"[Xx]{3,}")


def outcome(obs: Observation) -> str | None:
    """The word (module table) for one probe's observation, ``None`` when it decides nothing."""
    if isinstance(obs, ReflectVariantObs):
        word = _line_word(obs)
        if obs.companion_sent and obs.position == "after" and word in ("rewritten", "normalised", "passed"):
            comp = obs.companion
            if comp is None or comp.outcome == "timeout":
                return f"{word}-companion-lost" if word != "passed" else None
            if comp.outcome in ("reset", "closed"):
                return "closed"
        if obs.companion_sent and obs.position == "before" and obs.exchange is not None \
                and obs.exchange.outcome == "timeout" and obs.companion is not None \
                and obs.companion.outcome in ("reset", "closed"):
            return "closed"
        return word
    if isinstance(obs, ReflectActiveObs):
        return _line_word(obs)
    if isinstance(obs, ReflectReplyObs):
        ex = obs.exchange
        if ex is None:
            return None
        if ex.outcome in ("reset", "closed"):
            return "closed"
        if ex.reply is None:
            return None
        final = ex.reply.lines[-1].decode("latin-1")
        if obs.expected and obs.expected in final:
            return "intact"
        return "masked" if _MASK.search(final) else "other"
    if isinstance(obs, SynObs):
        if obs.seen is None or not obs.seen.mss or not obs.sent_mss:
            return None
        if obs.seen.mss > obs.sent_mss:
            return "new"
        return "same" if obs.seen.mss == obs.sent_mss else "clamped"
    if isinstance(obs, ReflectPassiveObs):
        if obs.declared is None or obs.advertised is None:
            return None
        return "passed" if obs.declared[1] == obs.advertised[1] else "rewritten"
    return None


# -- scoring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """One signature against the observations: ``agree`` / ``disagree``:
    ``(probe, observed word, expected words, source)``; ``share``: agreeing
    share of the decided probes (0 when none decided)."""

    signature: Signature
    agree: tuple[tuple[str, str, tuple[str, ...], str], ...]
    disagree: tuple[tuple[str, str, tuple[str, ...], str], ...]

    @property
    def share(self) -> float:
        decided = len(self.agree) + len(self.disagree)
        return len(self.agree) / decided if decided else 0.0


def score(words: Mapping[str, str | None], signatures: tuple[Signature, ...]) -> list[Match]:
    """Every signature scored against ``words`` (probe -> word or None), best
    first (share, then agreeing probes, then name)."""
    matches = []
    for sig in signatures:
        agree, disagree = [], []
        for probe, want in sig.expect.items():
            got = words.get(probe)
            if got is None:
                continue
            (agree if got in want.outcomes else disagree).append((probe, got, want.outcomes, want.source))
        matches.append(Match(sig, tuple(agree), tuple(disagree)))
    return sorted(matches, key=lambda m: (-m.share, -len(m.agree), m.signature.name))


def _all_probes() -> tuple[str, ...]:
    try:
        return tuple(sorted({p for s in load_signatures() for p in s.expect}))
    except TargetError:
        return ()


def _probe_line(entry: tuple[str, str, tuple[str, ...], str], agreed: bool) -> str:
    probe, got, want, source = entry
    verb = "agrees" if agreed else f"disagrees (expected {' or '.join(want)})"
    return f"{probe}: {got}, {verb}: {source}"


@rule("alg.implementation", reads=_all_probes())
def implementation(seen: Seen) -> Finding:
    """Which implementation the reflector probes match (signatures/*.toml).

    Each probe gives a word (:func:`outcome`; a single timeout, a missing
    report: none).  Each signature's share is its agreeing probes over the
    probes it names that gave a word.

    ===============================================================  ============
    the best signature                                              status
    ===============================================================  ============
    share >= 0.85, >= 5 agreeing, 0.1 ahead of the next; an ALG      present (data: implementation)
    the same, and it is "none" (no ALG: lines arrive as sent)       absent
    otherwise (too few probes decided, a mix, nothing close)        inconclusive ("unknown", the closest named)
    no probe gave a word                                            inconclusive
    not run / all failed                                            shared
    ===============================================================  ============

    The evidence lists every agreeing and disagreeing probe with the
    source it follows.
    """
    quirk = "alg.implementation"
    try:
        signatures = load_signatures()
    except TargetError as exc:
        return Finding(quirk, "inconclusive", [f"no signatures: {exc}"])
    words = {name: outcome(obs) for name, obs in seen.present().items()}
    decided = {n: w for n, w in words.items() if w is not None}
    if not decided:
        return Finding(quirk, "inconclusive", ["no probe gave a decided outcome (timeouts, no reflector reports)"]
                       + [f"probe {n} failed: {o.error}" for n, o in seen.failed.items()])
    ranked = score(decided, signatures)
    best, runner = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    lead = best.share - (runner.share if runner else 0.0)
    summary = ", ".join(f"{m.signature.name} {len(m.agree)}/{len(m.agree) + len(m.disagree)}" for m in ranked)
    evidence = ([f"best match: {best.signature.title}: {len(best.agree)} of "
                 f"{len(best.agree) + len(best.disagree)} probes agree (all: {summary})"]
                + [_probe_line(e, True) for e in best.agree] + [_probe_line(e, False) for e in best.disagree]
                + [f"undecided: {n}" for n, w in sorted(words.items()) if w is None])
    data = {"implementation": best.signature.name, "title": best.signature.title,
            "family": best.signature.family, "share": round(best.share, 3),
            "agree": [e[0] for e in best.agree], "disagree": [e[0] for e in best.disagree],
            "scores": {m.signature.name: round(m.share, 3) for m in ranked}}
    matched = best.share >= MATCH_SHARE and len(best.agree) >= MATCH_AGREE and lead >= MATCH_LEAD
    if matched and best.signature.name == "none":
        return Finding(quirk, "absent", evidence + ["no FTP ALG on this path"], data=data)
    if matched:
        return Finding(quirk, "present", evidence, f"this path behaves like {best.signature.title}: "
                       f"{best.signature.advice}", data=data)
    data["implementation"] = "unknown"
    data["closest"] = best.signature.name
    return Finding(quirk, "inconclusive", [f"unknown: no signature matches well (closest: {best.signature.title}, "
                                           f"{best.share:.0%} of its decided probes agree; a match needs "
                                           f"{MATCH_SHARE:.0%}, {MATCH_AGREE} agreeing probes and a "
                                           f"{MATCH_LEAD:.0%} lead)"] + evidence[1:], data=data)


# -- alg.pipeline-blind ------------------------------------------------------------------


PIPELINED = "alg-port-pipelined"


@rule("alg.pipeline-blind", reads=(PIPELINED,), baseline=PORT_CANONICAL)
def pipeline_blind(seen: Seen) -> Finding:
    """The canonical PORT is rewritten, but a PORT pipelined after a NOOP in
    the same TCP segment is not: the ALG inspects only the first command of
    a segment.

    ==============================================================  ============
    alg-port-crlf / alg-port-pipelined (NOOP + PORT, one segment)   status
    ==============================================================  ============
    rewritten / arrived with the address as sent                    present
    rewritten / rewritten                                           absent
    rewritten / connection closed or reset (a strict firewall       inconclusive
    refuses pipelining: the PORT was never judged)
    rewritten / timeout, no report, unparseable                     inconclusive
    arrived as sent (no ALG) / anything                             skipped
    no report or unparseable / anything                             inconclusive
    no positive reply (timeout, reset, refused) / anything          inconclusive (baseline)
    not run / failed                                                shared
    ==============================================================  ============
    """
    quirk = "alg.pipeline-blind"
    base, obs = seen.baseline, seen.get(PIPELINED)
    if not isinstance(base, ReflectActiveObs) or not isinstance(obs, ReflectActiveObs):
        return Finding(quirk, "inconclusive", ["no reflector observation to compare"])
    base_line, line = fate(base), fate(obs)
    evidence = [base_line.evidence, line.evidence]
    if isinstance(obs, ReflectVariantObs) and obs.companion_sent:
        evidence.append(f"{PIPELINED}: written in one segment after '{obs.companion_sent.decode('latin-1').strip()}'"
                        + (f"; reads at the reflector {','.join(map(str, obs.reflection.reads))}"
                           if obs.reflection is not None else ""))
    closed = obs.exchange is not None and obs.exchange.outcome in ("reset", "closed")
    return judge_pair(quirk, base_line, line, evidence,
                      "the ALG parses only the start of a TCP segment (Linux nf_conntrack_ftp's find_pattern, BSD "
                      "libalias' ParseFtpPortCommand): clients must send PORT/EPRT in a segment of its own, not "
                      "pipelined after another command",
                      undecided=("the connection was closed on the pipelined segment (a strict firewall refuses "
                                 "pipelining)",) if closed else ())
