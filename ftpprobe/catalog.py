"""The probe catalog: one TOML file per probe under ``probes/``.

A probe file says what to send, how and how many times, and which quirk ids
its observation decides.  Keys::

    name        = "pasv-lf"                # unique, matches the file name
    summary     = "PASV ended by a bare LF" # one line for `ftpprobe probes`
    action      = "command"                # the executor (ftpprobe.executors.ACTIONS)
    login       = true                     # log in before the probe's command
    exclusive   = false                    # run before the others, one by one
    vantage     = "server"                 # "server": any FTP server; "reflector": needs `ftpprobe reflect`
    decides     = ["server.bare-lf-rejected"]
    [command]                              # for actions that send one line
    verb        = "PASV"                   # exact spelling and case
    argument    = "..."                    # optional
    trailer     = " "                      # bytes before the line ending
    line_ending = "lf"                     # crlf | lf | cr | none
    cuts        = [2]                      # optional: send as TCP segments split at these offsets
    [params]                               # action-specific options

Installed, the catalog is the package resource ``ftpprobe/probes``; in a
source checkout it is the top-level ``probes/`` folder.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .codec import LINE_ENDINGS, Command
from .errors import TargetError
from .findings import QUIRKS


@dataclass(frozen=True)
class Probe:
    """One probe from the catalog (see the module docstring for the keys)."""

    name: str
    summary: str
    action: str
    decides: tuple[str, ...]
    login: bool = True
    exclusive: bool = False
    vantage: str = "server"
    command: Command | None = None
    cuts: tuple[int, ...] = ()
    params: dict = field(default_factory=dict)

    def sends(self) -> str:
        """What goes on the wire, escaped, for the catalog listing."""
        if self.command is not None:
            shown = self.command.display()
            if self.command.argument is None and self.command.verb.upper() in ("PORT", "EPRT"):
                shown = f"{self.command.verb} <address>{shown[len(self.command.verb):]}"
            return shown + (f" (TCP segments cut at byte {', '.join(map(str, self.cuts))})" if self.cuts else "")
        return self.params.get("sends", self.action)


def _command_from(table: dict, where: str) -> Command:
    ending = table.get("line_ending", "crlf")
    if ending not in LINE_ENDINGS:
        raise TargetError(f"{where}: line_ending must be one of {', '.join(LINE_ENDINGS)}, not {ending!r}")
    return Command(
        verb=table["verb"],
        argument=table.get("argument"),
        separator=table.get("separator", " ").encode("latin-1"),
        trailer=table.get("trailer", "").encode("latin-1"),
        line_ending=LINE_ENDINGS[ending],
    )


#: Every executor (:data:`ftpprobe.executors.ACTIONS`) and whether its probe
#: files must carry a ``[command]`` table (the line the action sends).
ACTION_NEEDS_COMMAND: dict[str, bool] = {
    "command": True, "passive": True, "active": True, "bounce": True, "auth-tls": True,
    "listing": False, "session-limit": False, "pasv-map": False,
    "reflect-active": True, "reflect-passive": True,
    "tls": False, "tls-versions": False,  # FTPS (ftpprobe.tls)
    "reset-capture": True, "hops": True,  # the packet probes (ftpprobe.packet_actions)
    "reflect-variant": True, "reflect-reply": True, "reflect-syn": True,  # ftpprobe.implementation_actions
}
PROBE_KEYS = {"name", "summary", "action", "login", "exclusive", "vantage", "decides", "command", "params"}
COMMAND_KEYS = {"verb", "argument", "separator", "trailer", "line_ending", "cuts"}
_TYPES = {"name": str, "summary": str, "action": str, "login": bool, "exclusive": bool, "vantage": str,
          "decides": list, "command": dict, "params": dict}


def _check_keys(data: dict, where: str, rules: set[str] | None) -> None:
    """Raise :class:`TargetError` naming ``where`` and the key for any key, type,
    action or quirk id that the catalog does not know."""
    unknown_keys = sorted(data.keys() - PROBE_KEYS)
    if unknown_keys:
        raise TargetError(f"{where}: unknown key(s) {', '.join(unknown_keys)} "
                          f"(known: {', '.join(sorted(PROBE_KEYS))})")
    missing = {"name", "summary", "action", "decides"} - data.keys()
    if missing:
        raise TargetError(f"{where}: missing key(s) {', '.join(sorted(missing))}")
    for key, kind in _TYPES.items():
        if key in data and not isinstance(data[key], kind):
            raise TargetError(f"{where}: key {key!r} must be a {kind.__name__}")
    if data["action"] not in ACTION_NEEDS_COMMAND:
        raise TargetError(f"{where}: key 'action': unknown action {data['action']!r} "
                          f"(known: {', '.join(sorted(ACTION_NEEDS_COMMAND))})")
    if ACTION_NEEDS_COMMAND[data["action"]] and "command" not in data:
        raise TargetError(f"{where}: action {data['action']!r} needs a [command] table (verb, line_ending, ...)")
    command = data.get("command", {})
    if command and "verb" not in command:
        raise TargetError(f"{where}: [command] needs a 'verb'")
    unknown_keys = sorted(command.keys() - COMMAND_KEYS)
    if unknown_keys:
        raise TargetError(f"{where}: unknown key(s) in [command]: {', '.join(unknown_keys)} "
                          f"(known: {', '.join(sorted(COMMAND_KEYS))})")
    if data.get("vantage", "server") not in VANTAGES:
        raise TargetError(f"{where}: key 'vantage' must be one of {', '.join(VANTAGES)}")
    unknown = [q for q in data["decides"] if q not in QUIRKS]
    if unknown:
        raise TargetError(f"{where}: key 'decides': unknown quirk id(s) {', '.join(unknown)}")
    if rules is not None:
        ruleless = [q for q in data["decides"] if q not in rules]
        if ruleless:
            raise TargetError(f"{where}: key 'decides': no rule decides {', '.join(ruleless)}")


def parse_probe(text: str, where: str, *, rules: set[str] | None = None) -> Probe:
    """Parse one probe file's text.

    ``rules``: the quirk ids that have a rule (every ``decides`` id must be
    one); ``None`` skips that check.  Raises :class:`TargetError` naming
    ``where`` and the offending key.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{where}: {exc}") from None
    _check_keys(data, where, rules)
    return Probe(
        name=data["name"],
        summary=data["summary"],
        action=data["action"],
        decides=tuple(data["decides"]),
        login=data.get("login", True),
        exclusive=data.get("exclusive", False),
        vantage=data.get("vantage", "server"),
        command=_command_from(data["command"], where) if "command" in data else None,
        cuts=tuple(data.get("command", {}).get("cuts", ())),
        params=data.get("params", {}),
    )


VANTAGES = ("server", "reflector")


def catalog_dir() -> Path:
    """Where the probe files are: the installed resource or the checkout's ``probes/``."""
    try:
        installed = resources.files("ftpprobe") / "probes"
        if installed.is_dir():
            return Path(str(installed))
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "probes"


def load_catalog(directory: Path | None = None, vantage: str | None = None) -> list[Probe]:
    """Every probe (of ``vantage``, if given), sorted by name.  Raises
    :class:`TargetError` for a bad file."""
    from .rules import RULES  # late: the rules module needs the catalog's types

    directory = directory or catalog_dir()
    probes = []
    for path in sorted(directory.glob("*.toml")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TargetError(f"{path}: cannot read probe file ({exc})") from None
        probe = parse_probe(text, str(path), rules=set(RULES))
        if probe.name != path.stem:
            raise TargetError(f"{path}: name {probe.name!r} does not match the file name")
        if vantage is None or probe.vantage == vantage:
            probes.append(probe)
    if not probes:
        raise TargetError(f"no probe files (*.toml) in {directory}")
    return probes

