"""Inference: observations in, findings out.  Pure functions, no network, no trio.

Each rule decides one quirk id of the catalog (``../QUIRKS.md``) and declares
what it reads::

    @rule("server.bare-lf-rejected", reads=("pasv-lf",), baseline="pasv-crlf")
    def bare_lf(seen: Seen) -> Finding: ...

The mechanism here, not the rule, handles the outcomes every rule shares, so
each rule's own decision table only covers what its probes answered:

========================================  ============================================
the probes a rule reads                   status (before the rule itself runs)
========================================  ============================================
none of them ran                          ``skipped`` ("probe X was not run")
all that ran failed (no session)          ``inconclusive`` ("probe X failed: ...")
all that ran were skipped                 ``skipped`` with their reasons
the baseline was not run                  ``inconclusive`` ("canonical X was not run")
the baseline failed or got no positive    ``inconclusive`` ("canonical X did not work
reply                                     either"): the variant cannot be compared
otherwise                                 the rule's own decision table
========================================  ============================================

The rules live by vantage: :mod:`.server` (any FTP server), :mod:`.path`
(through a reflector: NAT, ALG, firewall), :mod:`.passive` (the passive range),
:mod:`.tls` (FTPS: what the server says in clear text and inside TLS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..findings import Finding
from ..observations import Failed, Observation, Skipped


@dataclass(frozen=True)
class RunFacts:
    """Facts of the run that are not any one probe's observation.

    ``peer``: the control peer's address (text); ``from_lan``: the prober is
    inside the site's LAN (``--from-lan``); ``passive_map``: the analysed
    passive map (:class:`ftpprobe.passive.PassiveMap`) or ``None``, shared by
    the passive rules; ``cert_warn_days``: a TLS certificate that expires
    within this many days is reported (``check --cert-warn-days``).
    """

    peer: str = ""
    from_lan: bool = False
    passive_map: object | None = None
    cert_warn_days: int = 14


class Seen:
    """What one rule may read: its declared probes' usable observations and the run's facts.

    :meth:`get` raises ``KeyError`` for a probe the rule did not declare (a
    rule reads only what it says it reads).
    """

    def __init__(self, rule: "Rule", usable: Mapping[str, Observation], facts: RunFacts,
                 failed: Mapping[str, Failed] | None = None) -> None:
        self._rule = rule
        self._usable = usable
        self.facts = facts
        #: declared probes that ran and failed (for evidence: "probe X failed: ...")
        self.failed = dict(failed or {})

    def get(self, probe: str) -> Observation | None:
        """The observation of ``probe`` if it ran and did not fail, else ``None``."""
        if probe not in self._rule.reads and probe != self._rule.baseline:
            raise KeyError(f"rule {self._rule.quirk} reads {probe!r} without declaring it")
        return self._usable.get(probe)

    def present(self) -> dict[str, Observation]:
        """Every declared probe (baseline included) that ran and did not fail."""
        return dict(self._usable)

    @property
    def baseline(self) -> Observation | None:
        return self._usable.get(self._rule.baseline) if self._rule.baseline else None


Decide = Callable[[Seen], Finding]


@dataclass(frozen=True)
class Rule:
    """One rule: ``quirk`` it decides, the probes it ``reads``, the canonical
    ``baseline`` probe that must have worked for a comparison to mean anything."""

    quirk: str
    reads: tuple[str, ...]
    baseline: str | None
    decide: Decide = field(repr=False)


RULES: dict[str, Rule] = {}


def rule(quirk: str, *, reads: tuple[str, ...], baseline: str | None = None) -> Callable[[Decide], Decide]:
    """Register ``fn`` as the rule deciding ``quirk``.  Raises ``ValueError``
    for a second rule of the same id."""

    def register(fn: Decide) -> Decide:
        if quirk in RULES:
            raise ValueError(f"two rules decide {quirk}")
        RULES[quirk] = Rule(quirk, tuple(reads), baseline, fn)
        return fn

    return register


def baseline_ok(obs: Observation) -> tuple[bool, str]:
    """Did a canonical probe work (a positive reply to its command)?  ``(ok, evidence)``."""
    exchange = getattr(obs, "exchange", None)
    if exchange is None:
        return False, f"canonical {obs.probe}: no command sent"
    return exchange.positive, f"canonical {obs.probe}: {exchange.describe()}"


def decide(rule_: Rule, observations: Mapping[str, Observation], facts: RunFacts) -> Finding:
    """Apply the shared outcomes (the module's table), then the rule itself."""
    quirk = rule_.quirk
    ran = {name: observations[name] for name in rule_.reads if name in observations}
    if not ran:
        return Finding(quirk, "skipped", [f"probe {', '.join(rule_.reads)} was not run"])
    failed = {n: o for n, o in ran.items() if isinstance(o, Failed)}
    skipped = {n: o for n, o in ran.items() if isinstance(o, Skipped)}
    usable = {n: o for n, o in ran.items() if n not in failed and n not in skipped}
    if not usable:
        if failed:
            return Finding(quirk, "inconclusive", [f"probe {n} failed: {o.error}" for n, o in failed.items()])
        return Finding(quirk, "skipped", [f"probe {n}: {o.reason}" for n, o in skipped.items()])
    if rule_.baseline is not None:
        base = observations.get(rule_.baseline)
        if base is None:
            return Finding(quirk, "inconclusive", [f"canonical {rule_.baseline} was not run: nothing to compare with"])
        if isinstance(base, Failed):
            return Finding(quirk, "inconclusive", [f"canonical {rule_.baseline} failed: {base.error}"])
        ok, evidence = baseline_ok(base)
        if not ok:
            return Finding(quirk, "inconclusive", [evidence, "the canonical command did not work either: "
                                                            "fix that first"])
        usable[rule_.baseline] = base
    return rule_.decide(Seen(rule_, usable, facts, failed))


def infer(observations: Mapping[str, Observation], decided: list[str], facts: RunFacts) -> list[Finding]:
    """Run the rule of every quirk id in ``decided``, in that order.

    Raises ``KeyError`` for an id without a rule (the catalog refuses such a
    probe file at load, so this is a programming error).
    """
    return [decide(RULES[quirk], observations, facts) for quirk in decided]


def _load() -> None:
    # Importing the vantage modules registers their rules.
    from . import passive, path, server, tls  # noqa: F401
    from . import packets  # noqa: F401  -- path.reset-injected (packet captures)
    from . import implementation  # noqa: F401  -- alg.implementation, alg.pipeline-blind (signatures/)


_load()
