"""alg.implementation against the real Linux FTP helper (network namespaces, nftables).

The router is the kernel's own nf_conntrack_ftp + nf_nat_ftp, not an
emulation: the fingerprint must name Linux, on port 21 and on another port
the helper is attached to, and say "no ALG" without the helper.
"""

import pytest

from lab import NatLab, ftpprobe_in, reflector_in, running

pytestmark = pytest.mark.root


def findings(helper_port, target_port, other_port):
    with running(NatLab(helper_port=helper_port)) as lab, reflector_in(lab, lab.out, lab.OUT):
        _, report = ftpprobe_in(lab, lab.lan, "fingerprint", "--other-port", str(other_port),
                                f"{lab.OUT}:{target_port}")
    return {x["id"]: x for x in report["findings"]}


@pytest.mark.parametrize("helper_port", [21, 2121], ids=["helper-on-21", "helper-on-2121"])
def test_kernel_helper_is_named_linux(helper_port):
    other = 2121 if helper_port == 21 else 21
    f = findings(helper_port, helper_port, other)
    impl = f["alg.implementation"]
    assert impl["status"] == "present", impl
    assert impl["data"]["implementation"] == "linux", impl["data"]
    # The probes that single Linux out agree, each with its source.
    for probe in ("alg-port-first", "alg-port-lf", "alg-port-pipelined", "alg-port-then-noop", "alg-port-low",
                  "alg-tcp-identity"):
        assert probe in impl["data"]["agree"], (probe, impl["evidence"])
    assert any("nf_conntrack_ftp.c" in e for e in impl["evidence"])
    # find_pattern() matches only at the start of a segment.
    assert f["alg.pipeline-blind"]["status"] == "present", f["alg.pipeline-blind"]


def test_no_helper_is_no_alg():
    f = findings(None, 21, 2121)
    impl = f["alg.implementation"]
    assert impl["status"] == "absent", impl
    assert impl["data"]["implementation"] == "none"
    assert f["alg.pipeline-blind"]["status"] == "skipped"
