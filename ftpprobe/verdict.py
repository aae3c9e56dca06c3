"""The verdict a user acts on: can passive mode, can active mode carry data from here?  Pure.

Built from the findings (and, for the detail of a refusal, the observations)
of one run.  From outside a site (``probe``): passive works for which ports,
active works or not.  From a LAN through a reflector (``fingerprint``):
active mode fails at PORT (not rewritten) or at the data connection (no
pinhole), passive mode works or its data connections are blocked.

Each mode is ``works``, ``partly`` (some ports, or only for some clients),
``fails`` or ``unknown`` (the evidence does not decide; the reason says why).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Mapping

from .findings import Finding
from .observations import ActiveObs, Observation, ReflectActiveObs

State = Literal["works", "partly", "fails", "unknown"]


@dataclass(frozen=True)
class ModeVerdict:
    """One transfer mode: ``state`` and the ``reason`` in plain words."""

    mode: Literal["passive", "active"]
    state: State
    reason: str

    def line(self) -> str:
        """``passive mode: works (ports 40000-40099)``."""
        return f"{self.mode} mode: {self.state}" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class Verdict:
    """The answer first: ``passive`` and ``active`` mode from this vantage,
    plus ``notes`` (e.g. clients that trust the 227 address fail)."""

    vantage: Literal["server", "reflector"]
    passive: ModeVerdict
    active: ModeVerdict
    notes: tuple[str, ...] = field(default=())

    @property
    def no_data_path(self) -> bool:
        """Neither mode can carry data from this vantage (exit code 2)."""
        return self.passive.state == "fails" and self.active.state == "fails"

    def lines(self) -> list[str]:
        return [self.passive.line(), self.active.line(), *self.notes]

    def to_dict(self) -> dict:
        return {"vantage": self.vantage, "passive": asdict(self.passive), "active": asdict(self.active),
                "notes": list(self.notes), "no_data_path": self.no_data_path}


def _status(findings: Mapping[str, Finding], quirk: str) -> str | None:
    f = findings.get(quirk)
    return f.status if f else None


def _first(findings: Mapping[str, Finding], quirk: str) -> str:
    f = findings.get(quirk)
    return f.evidence[0] if f and f.evidence else ""


def _server_passive(f: Mapping[str, Finding]) -> ModeVerdict:
    unreachable, pasv_range = f.get("server.pasv-unreachable"), f.get("server.pasv-range")
    if _status(f, "path.hairpin") == "present":
        return ModeVerdict("passive", "fails", "from the LAN the site's public address serves the control "
                                               "connection but no data connection (hairpin NAT)")
    if unreachable is None or unreachable.status in ("skipped", "inconclusive"):
        why = unreachable.evidence[0] if unreachable and unreachable.evidence else "the passive map did not run"
        return ModeVerdict("passive", "unknown", why)
    ports = ""
    if pasv_range is not None and pasv_range.status == "present":
        low, high = pasv_range.data.get("estimate_low"), pasv_range.data.get("estimate_high")
        ports = f"ports {low}-{high}" if low is not None else ""
    if unreachable.status == "absent":
        return ModeVerdict("passive", "works", (ports + "; " if ports else "") + unreachable.evidence[0])
    if unreachable.severity == "critical":
        return ModeVerdict("passive", "fails", "; ".join(unreachable.evidence[:2]))
    return ModeVerdict("passive", "partly", "; ".join(unreachable.evidence[:3]))


def _server_active(f: Mapping[str, Finding], observations: Mapping[str, Observation]) -> ModeVerdict:
    if _status(f, "server.port-reset") == "present":
        return ModeVerdict("active", "fails", "at PORT: the control connection was reset ("
                                              + _first(f, "server.port-reset") + ")")
    blocked = f.get("path.active-blocked")
    if blocked is not None and blocked.status == "present":
        return ModeVerdict("active", "fails", "at the data connection: the server accepted the transfer but its "
                                              "connection to this prober never arrived (a firewall or NAT on this "
                                              "side needs a pinhole)")
    if blocked is not None and blocked.status == "absent":
        return ModeVerdict("active", "works", "the server's data connection arrived")
    for name in ("port-own", "eprt-own"):
        obs = observations.get(name)
        # Only a permanent refusal (5xx) decides; a 4xx is transient (RFC 959 §4.2).
        if isinstance(obs, ActiveObs) and obs.exchange is not None and (obs.exchange.code or 0) >= 500:
            return ModeVerdict("active", "fails", f"at PORT: the server refused it ({obs.exchange.describe()})")
    return ModeVerdict("active", "unknown", blocked.evidence[-1] if blocked and blocked.evidence
                       else "no active-mode probe ran")


def _reflector_passive(f: Mapping[str, Finding]) -> ModeVerdict:
    blocked = _status(f, "path.passive-blocked")
    if blocked == "present":
        return ModeVerdict("passive", "fails", "data connections blocked: " + _first(f, "path.passive-blocked"))
    if _status(f, "alg.pasv-mangle") == "present":
        return ModeVerdict("passive", "partly", "the router alters the PASV command: servers that do not accept "
                                                "the altered spelling refuse it")
    if blocked == "absent":
        return ModeVerdict("passive", "works", _first(f, "path.passive-blocked"))
    return ModeVerdict("passive", "unknown", _first(f, "path.passive-blocked") or "no passive probe decided")


def _reflector_active(f: Mapping[str, Finding], observations: Mapping[str, Observation]) -> ModeVerdict:
    if _status(f, "nat.no-alg") == "present":
        return ModeVerdict("active", "fails", "at PORT: NAT is present and PORT passes unrewritten, so the "
                                              "server refuses it or connects to a private address")
    blocked = _status(f, "path.active-blocked")
    if blocked == "present":
        return ModeVerdict("active", "fails", "at the data connection: PORT was accepted but the server's "
                                              "connection never arrived (no pinhole)")
    if blocked == "absent":
        rewritten = _status(f, "alg.port-rewrite") == "present"
        return ModeVerdict("active", "works", "PORT " + ("rewritten by the router's ALG and " if rewritten else "")
                           + "the server's data connection arrived")
    obs = observations.get("alg-port-crlf")
    # A reset on PORT is the path's answer; a timeout alone decides nothing.
    if isinstance(obs, ReflectActiveObs) and obs.exchange is not None and obs.exchange.outcome in ("reset", "closed"):
        return ModeVerdict("active", "fails", f"at PORT: {obs.exchange.describe()}")
    return ModeVerdict("active", "unknown", _first(f, "path.active-blocked") or "no active probe decided")


_STALL_NOTES = {
    "alg.stall.bare-lf": "clients that end PORT/PASV with a bare LF stall on this path",
    "alg.stall.space-lf": "clients that send 'PASV \\n' stall on this path",
    "alg.stall.trailing-space": "clients that send PORT with a trailing space stall on this path",
    "alg.stall.split": "clients that split a command across TCP segments stall on this path",
}


def verdict(findings: list[Finding], observations: Mapping[str, Observation], *,
            vantage: Literal["server", "reflector"]) -> Verdict:
    """The verdict for one run's ``findings`` (and ``observations``)."""
    by_id = {f.id: f for f in findings}
    notes = [text for quirk, text in _STALL_NOTES.items() if _status(by_id, quirk) == "present"]
    if vantage == "reflector":
        return Verdict(vantage, _reflector_passive(by_id), _reflector_active(by_id, observations), tuple(notes))
    if _status(by_id, "server.pasv-private-address") == "present":
        notes.append("clients that connect to the address in the 227 reply fail (it is not routable); "
                     "EPSV, or clients that ignore the 227 address, work")
    return Verdict(vantage, _server_passive(by_id), _server_active(by_id, observations), tuple(notes))
