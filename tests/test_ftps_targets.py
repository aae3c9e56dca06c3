"""FTPS targets: ftps:// (implicit), ftpes:// and tls = true (explicit), in URLs and targets files."""

import pytest

from ftpprobe.errors import TargetError
from ftpprobe.fleet import CHECK_PROBES, load_targets
from ftpprobe.target import parse_target


@pytest.mark.parametrize("url, mode, port, shown", [
    ("ftps://h/", "implicit", 990, "ftps://h/"),
    ("ftps://h:2990/", "implicit", 2990, "ftps://h:2990/"),
    ("ftpes://alice:s3cret@h/", "explicit", 21, "ftpes://alice@h/"),
    ("ftp://h/", "none", 21, "ftp://h/"),
])
def test_schemes(url, mode, port, shown):
    t = parse_target(url, use_netrc=False, environ={})
    assert (t.tls, t.port, t.url, t.tls_verify) == (mode, port, shown, True)
    assert "s3cret" not in repr(t) + str(t)


def test_tls_flag_and_insecure():
    t = parse_target("ftp://h/", use_netrc=False, environ={}, tls=True, insecure_tls=True)
    assert (t.tls, t.tls_verify, t.url) == ("explicit", False, "ftpes://h/")
    with pytest.raises(TargetError, match="ftps://host"):
        parse_target("sftp://h/", use_netrc=False, environ={})


def test_targets_file_tls_per_site(tmp_path):
    toml = tmp_path / "sites.toml"
    toml.write_text('[[site]]\nname = "a"\nurl = "ftp://a.example/"\ntls = true\n'
                    '[[site]]\nname = "b"\nurl = "ftps://b.example/"\n'
                    '[[site]]\nname = "c"\nurl = "ftp://c.example/"\n')
    a, b, c = load_targets(str(toml), environ={})
    assert (a.target.tls, b.target.tls, c.target.tls) == ("explicit", "implicit", "none")
    assert a.probes == b.probes == CHECK_PROBES + ("tls",) and c.probes == CHECK_PROBES
    csv = tmp_path / "sites.csv"
    csv.write_text("name,url,tls\nx,ftp://x.example/,yes\ny,ftp://y.example/,maybe\n")
    with pytest.raises(TargetError, match="line 3: tls must be true or false"):
        load_targets(str(csv), environ={})
