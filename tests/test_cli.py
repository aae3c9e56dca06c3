"""The command line as a user (or a monitoring system) meets it: exit codes,
one-line errors instead of tracebacks, secrets kept out of every message and
away from reflectors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from ftpprobe.codec import Command
from ftpprobe.errors import TargetError
from ftpprobe.reflector import TAG
from ftpprobe.target import mask_userinfo, parse_target

from conftest import run_cli

COMMANDS = ["probe", "map-pasv", "reflect", "fingerprint", "check", "probes", "demo"]


# -- 3. no traceback reaches the user -------------------------------------------

def run_with_failing_catalog(raise_statement: str, *args: str) -> subprocess.CompletedProcess:
    """``ftpprobe ARGS`` in a subprocess whose ``load_catalog`` (a library
    function the CLI calls) runs ``raise_statement``: an internal error
    without touching the product code."""
    script = textwrap.dedent(f"""
        import sys
        import ftpprobe.cli as cli

        def load_catalog(*args, **kwargs):
            {raise_statement}

        cli.load_catalog = load_catalog
        sys.argv = ["ftpprobe", *sys.argv[1:]]
        cli.main(prog_name="ftpprobe")
    """)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)


def test_internal_error_is_one_masked_line_and_exit_3():
    done = run_with_failing_catalog('raise RuntimeError("cannot reach ftp://bob:s3cret@host/\\nsecond line")',
                                    "probes")
    assert done.returncode == 3
    assert done.stderr == ("ftpprobe: internal error: RuntimeError: cannot reach ftp://***@host/ second line; "
                           "run with --debug for details\n")
    assert done.stdout == ""


def test_exception_group_is_one_line_naming_its_leaf():
    done = run_with_failing_catalog('raise ExceptionGroup("unhandled errors", [KeyError("pasv")])',
                                    "probe", "ftp://192.0.2.1/")
    assert done.returncode == 3
    assert done.stderr == "ftpprobe: internal error: KeyError: 'pasv'; run with --debug for details\n"


def test_debug_shows_the_traceback_masked():
    done = run_with_failing_catalog('raise RuntimeError("cannot reach ftp://bob:s3cret@host/")', "--debug", "probes")
    assert done.returncode == 3
    assert done.stderr.startswith("Traceback (most recent call last):")
    assert "RuntimeError: cannot reach ftp://***@host/" in done.stderr
    assert "s3cret" not in done.stderr


def test_keyboard_interrupt_is_one_line_and_exit_3():
    """3 (UNKNOWN), not 130 or click's 1: the check did not complete, which is
    what UNKNOWN means to Nagios."""
    done = run_with_failing_catalog("raise KeyboardInterrupt", "probes")
    assert done.returncode == 3
    assert done.stderr == "ftpprobe: interrupted\n"


def test_probe_error_escaping_a_command_is_an_error_line_not_internal():
    done = run_with_failing_catalog('from ftpprobe.errors import ProtocolError; raise ProtocolError("bad catalog")',
                                    "probes")
    assert done.returncode == 3
    assert done.stderr == "ftpprobe: error: bad catalog\n"


def test_mask_userinfo():
    assert mask_userinfo("at ftp://bob:pw@host:21/ and http://x@y") == "at ftp://***@host:21/ and http://***@y"
    # an unencoded '/' in the password: masked whole, up to the '@'
    assert mask_userinfo("'ftp://bob:s3cr/et@host/'") == "'ftp://***@host/'"
    assert mask_userinfo("ftp://host/path") == "ftp://host/path"


# -- 6. exit codes for monitoring -------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["probe", "--no-such-option", "ftp://192.0.2.1/"], "No such option"),
    (["no-such-command"], "No such command"),
    (["--no-such-global-option", "probes"], "No such option"),
    (["probe", "--only", "pasv-map,nonsense", "ftp://192.0.2.1/"], "unknown probe(s) nonsense"),
    (["check", "-w", "abc", "ftp://192.0.2.1/"], "'abc' is not a threshold range"),
    (["check", "--format", "xml", "ftp://192.0.2.1/"], "'xml' is not one of"),
    (["probe"], "Missing argument"),
    (["reflect", "--ports", "a,b"], "not a list of ports"),
])
def test_usage_errors_exit_3_with_clicks_usage_message(args, message):
    done = run_cli(*args, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "Usage: " in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_option_exits_3_in_every_command(command):
    done = run_cli(command, "--no-such-option", timeout=60)
    assert done.returncode == 3 and "No such option" in done.stderr


@pytest.mark.parametrize("command", [*COMMANDS, None])
def test_help_lists_exit_codes(command):
    done = run_cli(*([command] if command else []), "--help", timeout=60)
    assert done.returncode == 0
    assert "Exit codes" in done.stdout and "3 " in done.stdout.split("Exit codes", 1)[1]


def test_bad_url_exits_3_in_check_too():
    done = run_cli("check", "ftp://host:99999/", timeout=60)
    assert done.returncode == 3 and "not a valid ftp:// URL" in done.stdout


# -- 7. secrets -------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "ftp://bob:s3cr/et@host/",   # today: "Port could not be cast to integer value as 's3cr'"
    "ftp://bob:s3cr#et@host/",
    "ftp://bob:s3cr?et@host/",
    "ftp://bob:123/et@host/",    # would parse as port 123 of host "bob", echoing 123 in the report
])
def test_unencoded_reserved_character_in_password_is_refused_without_echo(url):
    with pytest.raises(TargetError, match="must be percent-encoded") as caught:
        parse_target(url, use_netrc=False)
    for part in ("s3cr", "123", "et@", "bob"):
        assert part not in str(caught.value)
    done = run_cli("probe", url, timeout=60)
    assert done.returncode == 3
    assert "'/' as %2F" in done.stderr
    for part in ("s3cr", "123", "et@"):
        assert part not in done.stderr + done.stdout


def test_percent_encoded_password_is_decoded():
    target = parse_target("ftp://bob%40example.net:s3%2Fr%3Fe%23t%40x%3Ay@host:2121/", use_netrc=False)
    assert (target.user, target.password, target.host, target.port) == ("bob@example.net", "s3/r?e#t@x:y", "host", 2121)
    # unambiguous within the authority, so still accepted: the last '@' ends it
    assert parse_target("ftp://bob@example.net:p@ss@host/", use_netrc=False).password == "p@ss"


def test_url_error_shows_only_the_host_part():
    with pytest.raises(TargetError, match=r"Port could not be cast to integer value as '99x'") as caught:
        parse_target("ftp://bob:pa[ss@host:99x/", use_netrc=False)
    assert "pa[ss" not in str(caught.value)
    with pytest.raises(TargetError, match="malformed user information") as caught:
        parse_target("ftp://bob:pa[ss@host/", use_netrc=False)
    assert "pa[ss" not in str(caught.value)


def test_secret_command_is_masked_in_repr_str_and_display():
    command = Command("PASS", "s3cret", secret=True)
    for shown in (repr(command), str(command), f"{command!r}", repr([command]), command.display()):
        assert "s3cret" not in shown and "****" in shown
    assert bytes(command) == b"PASS s3cret\r\n"  # the wire still carries it
    assert "'PORT'" in repr(Command("PORT", "1,2,3,4,5,6")) and "1,2,3,4,5,6" in repr(Command("PORT", "1,2,3,4,5,6"))


class RecordingReflector:
    """A real TCP listener that greets like ``ftpprobe reflect`` (so the
    fingerprint proceeds), asks for a password after every USER (the real
    reflector accepts USER alone, so it would never see a PASS) and records
    every byte it receives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            conn.sendall(f"220 {TAG} ready\r\n".encode())
            for line in lines:
                with self.lock:
                    self.received += line
                verb = line.split(b" ", 1)[0].strip().upper()
                conn.sendall({b"USER": b"331 password please\r\n", b"PASS": b"230 ok\r\n",
                              b"QUIT": b"221 bye\r\n"}.get(verb, b"200 seen\r\n"))

    def close(self) -> None:
        self.sock.close()


def test_fingerprint_never_sends_the_users_credentials_to_the_reflector(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login carol password netrc-s3cret\n")
    netrc.chmod(0o600)
    env = {**os.environ, "FTPPROBE_USER": "alice", "FTPPROBE_PASSWORD": "env-s3cret", "NETRC": str(netrc)}
    reflector = RecordingReflector()
    try:
        run_cli("fingerprint", "--only", "alg-port-crlf", "--timeout", "1", "--deadline", "20",
                f"127.0.0.1:{reflector.port}", timeout=60, env=env)
    finally:
        reflector.close()
    received = bytes(reflector.received)
    assert b"USER anonymous\r\n" in received and b"PASS ftpprobe@\r\n" in received  # it did log in
    for secret in (b"alice", b"env-s3cret", b"carol", b"netrc-s3cret"):
        assert secret not in received


def test_fingerprint_refuses_user_information():
    done = run_cli("fingerprint", "ftp://bob:s3cret@127.0.0.1:1/", timeout=60)
    assert done.returncode == 3
    assert "a reflector needs no login" in done.stderr and "s3cret" not in done.stderr
