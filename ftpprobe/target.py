"""Targets: ``ftp://[user[:password]@]host[:port]/`` and where credentials come from.

FTPS (RFC 4217): ``ftps://`` is implicit FTPS (TLS from the first byte, port
990 by default), ``ftpes://`` explicit FTPS (``AUTH TLS`` on port 21), as
curl, lftp and FileZilla name them; ``tls=True`` makes an ``ftp://`` target
explicit FTPS.

Credentials, in order: the URL, ``~/.netrc`` (or ``$NETRC``) for the host, the
environment (``FTPPROBE_USER`` / ``FTPPROBE_PASSWORD``), then anonymous
(RFC 1635).  A :class:`Target` never shows its password: not in ``repr``,
``str``, :meth:`Target.url` or any report.
"""

from __future__ import annotations

import ipaddress
import netrc
import os
import re
import urllib.parse
from dataclasses import dataclass, field

from .errors import TargetError

DEFAULT_PORT = 21
IMPLICIT_TLS_PORT = 990
#: scheme -> TLS mode of the target's sessions
SCHEMES = {"ftp": "none", "ftpes": "explicit", "ftps": "implicit"}
#: A reflector's second control port (one where a router's ALG may not act).
DEFAULT_OTHER_PORT = 2121
ANONYMOUS = ("anonymous", "ftpprobe@")

#: Said whenever the user information of a URL cannot be trusted to have been
#: split correctly; it names no part of what was given.
PERCENT_ENCODE_HINT = ("the user name and password must be percent-encoded in a URL (RFC 3986 §3.2.1): "
                       "'/' as %2F, '?' as %3F, '#' as %23, '@' as %40, ':' as %3A, '%' as %25")

# scheme://anything-up-to-the-last-@-of-the-token: greedy on purpose, so that
# a password holding an unencoded '/', '?' or '#' is masked whole.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s'\"<>@]*@(?:[^\s'\"<>@]*@)*")


def mask_userinfo(text: str) -> str:
    """Return ``text`` with the user information of every URL in it replaced by
    ``***`` (``ftp://bob:pw@host/`` -> ``ftp://***@host/``).

    Used on every message the CLI prints about an unexpected error, whose text
    nobody vetted for secrets.  Errs on the side of masking: an ``@`` anywhere
    later in the same word counts as the end of user information.
    """
    return _USERINFO.sub(r"\1***@", text)


@dataclass(frozen=True)
class Target:
    """An FTP server to probe.

    ``host`` is a name or an IP literal (without brackets), ``port`` the
    control port, ``user``/``password`` the login (``password`` hidden from
    every rendering), ``credential_source`` one of ``"url"``, ``"netrc"``,
    ``"env"``, ``"anonymous"``.  ``tls``: ``none`` (plain FTP),
    ``explicit`` (AUTH TLS, RFC 4217 §4) or ``implicit`` (TLS from the first
    byte); ``tls_verify``: check the server's certificate (off only with
    ``--insecure-tls``, for diagnosis).
    """

    host: str
    port: int = DEFAULT_PORT
    user: str = ANONYMOUS[0]
    password: str = field(default=ANONYMOUS[1], repr=False)
    credential_source: str = "anonymous"
    tls: str = "none"
    tls_verify: bool = True

    @property
    def url(self) -> str:
        """The URL without the password: ``ftp://user@host:port/`` (``ftps://``
        implicit, ``ftpes://`` explicit FTPS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = "" if self.anonymous else urllib.parse.quote(self.user, safe="") + "@"
        default = IMPLICIT_TLS_PORT if self.tls == "implicit" else DEFAULT_PORT
        port = "" if self.port == default else f":{self.port}"
        scheme = {v: k for k, v in SCHEMES.items()}.get(self.tls, "ftp")
        return f"{scheme}://{user}{host}{port}/"

    @property
    def anonymous(self) -> bool:
        return self.user.lower() in ("anonymous", "ftp")

    def __str__(self) -> str:
        return self.url


def parse_target(text: str, *, use_netrc: bool = True, environ: dict[str, str] | None = None,
                 tls: bool = False, insecure_tls: bool = False) -> Target:
    """Parse ``ftp://[user[:password]@]host[:port]/`` (a bare ``host[:port]`` is
    accepted too) and resolve credentials.

    Reserved characters in the user name or password must be percent-encoded
    (RFC 3986 §3.2.1: ``/`` as ``%2F``, ``@`` as ``%40``, ...); they are
    decoded here.  An unencoded ``@`` or ``:`` inside the authority is still
    accepted (the last ``@`` ends the user information, the first ``:`` ends
    the user name: e-mail addresses as user names are common), since that
    split is unambiguous.

    ``ftps://`` (implicit FTPS, port 990) and ``ftpes://`` (explicit FTPS)
    are accepted too; ``tls``: an ``ftp://`` URL is explicit FTPS;
    ``insecure_tls``: do not check the server's certificate.

    Raises :class:`TargetError` naming the problem (wrong scheme, no host,
    bad port, user information that needs percent-encoding); the message
    never repeats any part of the user information.
    """
    environ = os.environ if environ is None else environ
    raw = text.strip()
    if "://" not in raw:
        raw = "ftp://" + raw
    _reject_unencoded_userinfo(raw)
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError:
        # urllib's message may quote the netloc, user information included:
        # re-parse without it so that only the host part can be echoed.
        raise TargetError(f"not a valid ftp:// URL ({_host_part_problem(raw)}); "
                          "expected ftp://[user[:password]@]host[:port]/") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise TargetError(f"unsupported scheme {parts.scheme!r}: give ftp://host[:port]/, ftps://host[:port]/ "
                          "(implicit FTPS) or ftpes://host[:port]/ (explicit FTPS)")
    mode = SCHEMES[scheme]
    if tls and mode == "none":
        mode = "explicit"
    host = parts.hostname
    if not host:
        raise TargetError("no host in URL; expected ftp://[user[:password]@]host[:port]/")
    if port == 0:
        raise TargetError("port 0 is not a valid control port")
    port = port or (IMPLICIT_TLS_PORT if mode == "implicit" else DEFAULT_PORT)
    secure = {"tls": mode, "tls_verify": not insecure_tls}

    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        if parts.password is None:
            password = _netrc_password(host, user) if use_netrc else None
            password = password if password is not None else environ.get("FTPPROBE_PASSWORD", "")
        return Target(host, port, user, password, "url", **secure)
    if use_netrc:
        found = _netrc_lookup(host)
        if found:
            return Target(host, port, found[0], found[1], "netrc", **secure)
    if environ.get("FTPPROBE_USER"):
        return Target(host, port, environ["FTPPROBE_USER"], environ.get("FTPPROBE_PASSWORD", ""), "env", **secure)
    return Target(host, port, **secure)


def _reject_unencoded_userinfo(raw: str) -> None:
    """Raise :class:`TargetError` when an ``@`` follows the authority part.

    The authority ends at the first ``/``, ``?`` or ``#`` (RFC 3986 §3.2), so
    ``ftp://bob:s3cr/et@host/`` would name host ``bob``, port ``s3cr``, and a
    password such as ``123/x`` would even parse, silently, as port 123 of host
    ``bob``.  An ``@`` after the authority almost always means the password
    (or user) holds an unencoded reserved character; ftpprobe ignores paths,
    so refusing the rare ``@`` in a path costs nothing.
    """
    rest = raw.split("://", 1)[1]
    end = _authority_end(rest)
    if "@" not in rest[:end] and "@" in rest[end:]:
        raise TargetError(f"cannot tell where the user information (USER:PASSWORD@) ends: {PERCENT_ENCODE_HINT}")


def _authority_end(rest: str) -> int:
    """Index in ``rest`` (the URL after ``://``) where the authority ends."""
    return min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))


def _host_part_problem(raw: str) -> str:
    """urllib's complaint about ``raw`` with its user information removed (so
    it can be shown), or a percent-encoding hint when only the user
    information was at fault."""
    scheme, rest = raw.split("://", 1)
    end = _authority_end(rest)
    try:
        urllib.parse.urlsplit(f"{scheme}://{rest[:end].rpartition('@')[2]}{rest[end:]}").port
    except ValueError as exc:
        return str(exc)
    return "malformed user information: " + PERCENT_ENCODE_HINT


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


def reflector_target(text: str) -> Target:
    """The reflector at ``HOST[:PORT]`` (or ``ftp://HOST[:PORT]/``), logged in
    to with the fixed anonymous identity.

    Why: the reflector accepts any login and journals every line it receives,
    and it is usually someone else's host; the user's FTPPROBE_USER /
    FTPPROBE_PASSWORD or ~/.netrc credentials are meant for their servers.
    Raises :class:`TargetError` for a bad address or one with user information.
    """
    try:  # a bare IPv6 address (2001:db8::1) needs brackets in a URL (RFC 3986 §3.2.2)
        text = f"[{ipaddress.IPv6Address(text.strip())}]"
    except ValueError:
        pass
    parsed = parse_target(text if "://" in text else f"ftp://{text}", use_netrc=False, environ={})
    if parsed.credential_source != "anonymous":
        raise TargetError("a reflector needs no login: give HOST[:PORT] without USER[:PASSWORD]@")
    return Target(parsed.host, parsed.port)
