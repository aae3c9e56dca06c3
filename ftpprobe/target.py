"""Targets: ``ftp://[user[:password]@]host[:port]/`` and where credentials come from.

Credentials, in order: the URL, ``~/.netrc`` (or ``$NETRC``) for the host, the
environment (``FTPPROBE_USER`` / ``FTPPROBE_PASSWORD``), then anonymous
(RFC 1635).  A :class:`Target` never shows its password: not in ``repr``,
``str``, :meth:`Target.url` or any report.
"""

from __future__ import annotations

import netrc
import os
import urllib.parse
from dataclasses import dataclass, field

from .errors import TargetError

DEFAULT_PORT = 21
ANONYMOUS = ("anonymous", "ftpprobe@")


@dataclass(frozen=True)
class Target:
    """An FTP server to probe.

    ``host`` is a name or an IP literal (without brackets), ``port`` the
    control port, ``user``/``password`` the login (``password`` hidden from
    every rendering), ``credential_source`` one of ``"url"``, ``"netrc"``,
    ``"env"``, ``"anonymous"``.
    """

    host: str
    port: int = DEFAULT_PORT
    user: str = ANONYMOUS[0]
    password: str = field(default=ANONYMOUS[1], repr=False)
    credential_source: str = "anonymous"

    @property
    def url(self) -> str:
        """The URL without the password: ``ftp://user@host:port/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = "" if self.anonymous else urllib.parse.quote(self.user, safe="") + "@"
        port = "" if self.port == DEFAULT_PORT else f":{self.port}"
        return f"ftp://{user}{host}{port}/"

    @property
    def anonymous(self) -> bool:
        return self.user.lower() in ("anonymous", "ftp")

    def __str__(self) -> str:
        return self.url


def parse_target(text: str, *, use_netrc: bool = True, environ: dict[str, str] | None = None) -> Target:
    """Parse ``ftp://[user[:password]@]host[:port]/`` (a bare ``host[:port]`` is
    accepted too) and resolve credentials.

    Raises :class:`TargetError` naming the problem (wrong scheme, no host,
    bad port); the message never repeats a password.
    """
    environ = os.environ if environ is None else environ
    raw = text.strip()
    if "://" not in raw:
        raw = "ftp://" + raw
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise TargetError(f"not a valid ftp:// URL ({exc}); expected ftp://[user[:password]@]host[:port]/") from None
    if parts.scheme.lower() != "ftp":
        raise TargetError(f"unsupported scheme {parts.scheme!r}: ftpprobe speaks plain FTP, give ftp://host[:port]/")
    host = parts.hostname
    if not host:
        raise TargetError("no host in URL; expected ftp://[user[:password]@]host[:port]/")
    if port == 0:
        raise TargetError("port 0 is not a valid control port")
    port = port or DEFAULT_PORT

    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        if parts.password is None:
            password = _netrc_password(host, user) if use_netrc else None
            password = password if password is not None else environ.get("FTPPROBE_PASSWORD", "")
        return Target(host, port, user, password, "url")
    if use_netrc:
        found = _netrc_lookup(host)
        if found:
            return Target(host, port, found[0], found[1], "netrc")
    if environ.get("FTPPROBE_USER"):
        return Target(host, port, environ["FTPPROBE_USER"], environ.get("FTPPROBE_PASSWORD", ""), "env")
    return Target(host, port)


def _netrc_lookup(host: str) -> tuple[str, str] | None:
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    if not os.path.exists(path):
        return None
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        raise TargetError(f"cannot read {path}: {getattr(exc, 'msg', exc)}") from None
    if not auth:
        return None
    login, _account, password = auth
    return (login or ANONYMOUS[0], password or "")


def _netrc_password(host: str, user: str) -> str | None:
    found = _netrc_lookup(host)
    return found[1] if found and found[0] == user else None
