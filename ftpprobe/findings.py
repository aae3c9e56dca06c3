"""Findings and the quirk catalog (ids are a public contract, never renamed).

The ids and their meaning are those of QUIRKS.md; each carries a default
severity that decides the exit code: ``info`` (0), ``warning`` (1),
``critical`` (2: no data connection possible).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["present", "absent", "inconclusive", "skipped"]
Severity = Literal["info", "warning", "critical"]
STATUSES: tuple[Status, ...] = ("present", "absent", "inconclusive", "skipped")

#: id -> (default severity when present, one-line meaning).
QUIRKS: dict[str, tuple[Severity, str]] = {
    # middlebox (router / firewall / ALG), measured with a reflector
    "nat.present": ("info", "the reflector sees a source address other than the prober's local address"),
    "alg.port-rewrite": ("info", "the address in a PORT command is rewritten in transit"),
    "alg.eprt-rewrite": ("info", "the address in an EPRT command (RFC 2428) is rewritten"),
    "alg.port-remap": ("info", "the ALG also changed the port number, not only the address"),
    "alg.reply-rewrite": ("info", "a 227/229 reply is rewritten on its way to the prober"),
    "alg.pasv-mangle": ("warning", "the PASV command itself is altered in transit (e.g. to P@SW)"),
    "alg.stall.bare-lf": ("warning", "a PORT/PASV line ended by a bare LF stalls the control connection"),
    "alg.stall.space-lf": ("warning", "the line 'PASV \\n' (space, bare LF) stalls the control connection"),
    "alg.stall.trailing-space": ("warning", "a PORT line with a trailing space before CRLF stalls the connection"),
    "alg.stall.split": ("warning", "a command split across TCP segments stalls the connection"),
    "alg.first-command-blind": ("info", "the ALG does not inspect the first line of a session"),
    "alg.case-sensitive": ("info", "PORT is rewritten but port is not"),
    "alg.foreign-ignored": ("info", "a PORT naming an address other than the sender's is not rewritten"),
    "alg.port-21-only": ("info", "the ALG acts on control port 21 but not on another port"),
    "alg.canonicalizes": ("info", "the ALG rewrites the whole line rather than only the numbers"),
    "nat.no-alg": ("warning", "NAT is present and PORT passes unrewritten: active mode cannot work through it"),
    "path.active-blocked": ("warning", "the server's active-mode data connection to the prober never arrives"),
    "path.reset-injected": ("warning", "a TCP reset on the control connection came from a middlebox, not from the "
                                        "peer (its IP TTL, IP ID or window differ from the peer's own packets)"),
    # server
    "server.pasv-private-address": ("warning", "a 227 reply advertises a non-routable address while the control peer is routable"),
    "server.pasv-address-mismatch": ("warning", "a 227 reply advertises an address other than the control peer's"),
    "server.pasv-unreachable": ("warning", "data connections to the advertised passive ports fail"),
    "server.pasv-range": ("info", "the mapped passive port range"),
    "server.pasv-range-wide": ("warning", "the passive range is too wide to forward by hand (over 1000 ports)"),
    "server.pasv-outside-range": ("warning", "some passive ports fall outside the rest of the range"),
    "server.epsv-unsupported": ("warning", "EPSV (RFC 2428) is refused"),
    "server.port-foreign-accepted": ("warning", "PORT to a third-party address is accepted (FTP bounce)"),
    "server.port-reset": ("warning", "the server drops or resets the control connection on PORT"),
    "server.bare-lf-rejected": ("info", "a command ended by a bare LF is not executed"),
    "server.case-sensitive": ("warning", "lower-case commands are refused"),
    "server.psw-alias": ("info", "P@SW is accepted as PASV (a workaround for the SMC Barricade bug)"),
    "server.cleartext-login": ("warning", "credentials were sent in clear text"),
    "server.list-unparseable": ("warning", "LIST output is neither Unix- nor DOS-style, and MLSD is missing"),
    "server.connection-limit": ("info", "the server limits concurrent sessions"),
    "server.active-source-port": ("info", "the active-mode data connection does not come from port 20 (control port - 1)"),
    "path.hairpin": ("warning", "from the LAN, the site's public address serves control but not data connections"),
    "server.space-lf-rejected": ("info", "'PASV \\n' (a space, then a bare LF) is not executed"),
    "server.cr-rejected": ("info", "a command ended by a bare CR is not executed"),
    "server.trailing-space-rejected": ("info", "a command with a trailing space before CRLF is refused"),
    "server.split-rejected": ("warning", "a command that arrives split across TCP segments is not executed"),
    "server.pasv-relies-on-alg": ("warning", "inside TLS the 227 reply names another address than in clear text: "
                                             "plain FTP works only because the router rewrites it"),
    "server.tls-data-unreachable": ("warning", "passive ports reachable over plain FTP are not reachable for FTPS "
                                               "sessions (opened by the router's FTP helper, not forwarded)"),
    "server.tls-certificate": ("warning", "the server's certificate is expired, not yet valid, self-signed, for "
                                          "another name, or has a weak key"),
    "server.tls-protocol": ("info", "the TLS versions offered and whether data connections must reuse the TLS session"),
    "alg.pipeline-blind": ("info", "the ALG inspects only the first command of a TCP segment: a PORT pipelined "
                                  "after another command passes unrewritten"),
    "alg.implementation": ("info", "which ALG implementation the fingerprint matches (Linux, BSD libalias, a userland "
                                   "proxy, a strict inspecting firewall), with the probes that agree and disagree"),
    "path.passive-blocked": ("warning", "passive data connections to the advertised ports fail from this vantage "
                                         "while the control connection works"),
    # changes since a baseline (ftpprobe check --baseline)
    "change.site-dark": ("critical", "the site answered at the baseline and does not now"),
    "change.quirk-appeared": ("warning", "a quirk absent at the baseline is present now"),
    "change.pasv-range-moved": ("warning", "the passive range moved since the baseline"),
    "change.pasv-address-changed": ("warning", "the address in 227 replies changed since the baseline"),
    "change.alg-changed": ("warning", "the router's ALG fingerprint differs from the baseline's"),
}

SEVERITY_EXIT = {"info": 0, "warning": 1, "critical": 2}
#: The exit code when the probe itself failed (Nagios UNKNOWN).
EXIT_PROBE_FAILED = 3


@dataclass
class Finding:
    """One decided quirk.

    ``id``: a key of :data:`QUIRKS`; ``status``: present / absent /
    inconclusive / skipped; ``evidence``: human-readable lines with exact
    bytes escaped (see :func:`ftpprobe.codec.escape`), addresses, ports,
    timings; ``advice``: one line an operator can act on; ``severity``: how
    bad it is when present (defaults from :data:`QUIRKS`); ``data``: machine-
    readable details for scripts (e.g. the mapped range).
    """

    id: str
    status: Status
    evidence: list[str] = field(default_factory=list)
    advice: str = ""
    severity: Severity | None = None
    data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id not in QUIRKS:
            raise ValueError(f"unknown quirk id {self.id!r}")
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if self.severity is None:
            self.severity = QUIRKS[self.id][0]

    def to_dict(self) -> dict:
        return asdict(self)


def exit_code(findings: list[Finding]) -> int:
    """0 nothing wrong, 1 a warning-level quirk present, 2 a critical one."""
    worst = 0
    for f in findings:
        if f.status == "present":
            worst = max(worst, SEVERITY_EXIT[f.severity or "info"])
    return worst
