"""The project's own errors.

Every ``OSError`` and timeout from the network is turned into one of these in
one place (:mod:`ftpprobe.transport`), so the CLI can print one clear line and
exit with code 3 instead of a traceback.  Messages never contain a password.
"""

from __future__ import annotations


class FtpProbeError(Exception):
    """Base class: a probe could not be carried out as asked."""


class TargetError(FtpProbeError, ValueError):
    """The target (URL, targets file, options) is malformed."""


class ConnectFailed(FtpProbeError):
    """A TCP connection could not be opened (refused, unreachable, DNS, timeout)."""


class ProtocolError(FtpProbeError):
    """The peer sent bytes that are not valid FTP (RFC 959 §4.2), or too many."""


class PeerClosed(FtpProbeError):
    """The peer closed (``reset=False``) or reset (``reset=True``) the connection."""

    def __init__(self, message: str, *, reset: bool = False) -> None:
        super().__init__(message)
        self.reset = reset


class ReplyTimeout(FtpProbeError):
    """No complete reply arrived within the deadline.

    ``tcp_info`` holds the kernel's view of the connection at that moment (see
    :func:`ftpprobe.transport.read_tcp_info`), the evidence that tells a stall
    (bytes sent, never acknowledged or never answered) from a slow server;
    ``partial`` holds bytes received but not forming a complete reply.
    """

    def __init__(self, message: str, *, tcp_info: dict | None = None, partial: bytes = b"") -> None:
        super().__init__(message)
        self.tcp_info = tcp_info or {}
        self.partial = partial


class LoginFailed(FtpProbeError):
    """USER/PASS was refused (RFC 959 §4.2: 530, or another non-2xx reply)."""


class TlsFailed(FtpProbeError):
    """A TLS handshake (RFC 4217 §4, §7) failed, or the server refused AUTH TLS.

    ``verify_code`` / ``verify_message``: OpenSSL's certificate verification
    result when the certificate was the reason (``X509_V_ERR_*``, e.g. 10
    "certificate has expired", 62 "Hostname mismatch"), else 0 / ``""``;
    ``alert``: OpenSSL's reason for any other failure (e.g.
    ``TLSV1_ALERT_PROTOCOL_VERSION``, ``WRONG_VERSION_NUMBER``).
    """

    def __init__(self, message: str, *, verify_code: int = 0, verify_message: str = "", alert: str = "") -> None:
        super().__init__(message)
        self.verify_code = verify_code
        self.verify_message = verify_message
        self.alert = alert
