"""The probe catalog: one TOML file per probe under ``probes/``.

A probe file says what to send, how and how many times, and which quirk ids
its observation decides.  Keys::

    name        = "pasv-lf"                # unique, matches the file name
    summary     = "PASV ended by a bare LF" # one line for `ftpprobe probes`
    action      = "command"                # the executor (ftpprobe.executors.ACTIONS)
    login       = true                     # log in before the probe's command
    exclusive   = false                    # run alone, before the others
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


def parse_probe(text: str, where: str) -> Probe:
    """Parse one probe file's text.  Raises :class:`TargetError` naming ``where``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{where}: {exc}") from None
    missing = {"name", "summary", "action", "decides"} - data.keys()
    if missing:
        raise TargetError(f"{where}: missing key(s) {', '.join(sorted(missing))}")
    if data.get("vantage", "server") not in VANTAGES:
        raise TargetError(f"{where}: vantage must be one of {', '.join(VANTAGES)}")
    unknown = [q for q in data["decides"] if q not in QUIRKS]
    if unknown:
        raise TargetError(f"{where}: unknown quirk id(s) {', '.join(unknown)}")
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
    directory = directory or catalog_dir()
    probes = []
    for path in sorted(directory.glob("*.toml")):
        probe = parse_probe(path.read_text(encoding="utf-8"), str(path))
        if probe.name != path.stem:
            raise TargetError(f"{path}: name {probe.name!r} does not match the file name")
        if vantage is None or probe.vantage == vantage:
            probes.append(probe)
    if not probes:
        raise TargetError(f"no probe files (*.toml) in {directory}")
    return probes

