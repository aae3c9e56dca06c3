"""The probe catalog is validated when it loads: every mistake names the file and the key."""

import shutil

import pytest

from ftpprobe.catalog import ACTION_NEEDS_COMMAND, catalog_dir, load_catalog, parse_probe
from ftpprobe.errors import TargetError
from ftpprobe.executors import ACTIONS


def test_every_executor_is_known_to_the_catalog():
    assert set(ACTION_NEEDS_COMMAND) == set(ACTIONS)


def _catalog_with(tmp_path, name: str, text: str):
    shutil.copytree(catalog_dir(), tmp_path / "probes")
    (tmp_path / "probes" / f"{name}.toml").write_text(text)
    return tmp_path / "probes"


@pytest.mark.parametrize("text, message", [
    ('name = "x"\nsummary = "s"\naction = "shout"\ndecides = []\n',
     "key 'action': unknown action 'shout'"),
    ('name = "x"\nsummary = "s"\naction = "command"\ndecides = []\n',
     "action 'command' needs a [command] table"),
    ('name = "x"\nsummary = "s"\naction = "pasv-map"\ndecides = []\ntimeout = 3\n',
     "unknown key(s) timeout"),
    ('name = "x"\nsummary = "s"\naction = "command"\ndecides = []\n[command]\nverb = "PASV"\nending = "lf"\n',
     "unknown key(s) in [command]: ending"),
    ('name = "x"\nsummary = "s"\naction = "command"\ndecides = ["server.no-such-thing"]\n[command]\nverb = "PASV"\n',
     "key 'decides': unknown quirk id(s) server.no-such-thing"),
    ('name = "x"\nsummary = "s"\naction = "command"\ndecides = "server.cr-rejected"\n[command]\nverb = "PASV"\n',
     "key 'decides' must be a list"),
])
def test_a_bad_probe_file_is_refused_at_load_naming_file_and_key(tmp_path, text, message):
    directory = _catalog_with(tmp_path, "x", text)
    with pytest.raises(TargetError) as caught:
        load_catalog(directory)
    assert str(directory / "x.toml") in str(caught.value)
    assert message in str(caught.value)


def test_a_decided_id_without_a_rule_is_refused():
    text = 'name = "x"\nsummary = "s"\naction = "command"\ndecides = ["server.psw-alias"]\n[command]\nverb = "P@SW"\n'
    with pytest.raises(TargetError, match="x.toml: key 'decides': no rule decides server.psw-alias"):
        parse_probe(text, "x.toml", rules={"server.epsv-unsupported"})


def test_the_shipped_catalog_loads():
    assert {p.name for p in load_catalog()} >= {"pasv-crlf", "pasv-map", "alg-port-crlf"}
