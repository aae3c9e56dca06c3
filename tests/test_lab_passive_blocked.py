"""path.passive-blocked on a real Linux router (network namespaces, nftables).

The router masquerades the LAN and passes the control connections to the
reflector (ports 21 and 2121), but its forward chain drops every new TCP
connection from the LAN to any other port of the reflector: the passive data
connections.  Connections the kernel FTP helper expects (``ct state related``)
are not new, so with the helper on port 21 the data connection of a PASV on
port 21 passes: a firewall that opens data ports only for its ALG.
"""

import pytest

from lab import NatLab, ftpprobe_in, helper_rules, reflector_in, running

pytestmark = pytest.mark.root

CONTROL_PORTS = (21, 2121)


class DataBlockingLab(NatLab):
    """:class:`NatLab` whose router drops new forwarded TCP connections from
    the LAN to the outside host on any port but the control ports."""

    def rules(self) -> str:
        ports = ", ".join(str(p) for p in CONTROL_PORTS)
        return f"""table ip lab {{{helper_rules(self.helper_port)}
  chain post {{
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" masquerade
  }}
  chain data_filter {{
    type filter hook forward priority 0; policy accept;
    iifname "lan0" ip daddr {self.OUT} tcp dport != {{ {ports} }} ct state new counter drop
  }}
}}
"""


def fingerprint(helper_port):
    with running(DataBlockingLab(helper_port=helper_port)) as lab, reflector_in(lab, lab.out, lab.OUT):
        _, report = ftpprobe_in(lab, lab.lan, "fingerprint", "--other-port", "2121", lab.OUT)
        dropped = lab.ns(lab.rtr, "nft", "list", "chain", "ip", "lab", "data_filter").stdout
    return report, dropped


def test_data_connections_dropped_by_the_router():
    report, dropped = fingerprint(None)
    f = {x["id"]: x for x in report["findings"]}
    assert "path.passive-blocked" in f, sorted(f)
    blocked = f["path.passive-blocked"]
    assert blocked["status"] == "present", blocked
    assert blocked["evidence"][0].startswith("passive data connections: 0 of"), blocked["evidence"]
    assert "198.51.100.2" in blocked["evidence"][0]
    # The control connection worked: the 227/229 replies arrived and were compared.
    assert f["alg.reply-rewrite"]["status"] == "absent"
    assert f["nat.present"]["status"] == "present"
    # The router's drop rule really counted the prober's SYNs.
    assert "packets 0 " not in dropped, dropped


def test_helper_expectation_opens_the_data_port():
    # With the kernel helper on port 21, the PASV on port 21 gets an expectation
    # (ct state related, not new): its data connection passes.
    report, _ = fingerprint(21)
    f = {x["id"]: x for x in report["findings"]}
    blocked = f["path.passive-blocked"]
    assert blocked["status"] == "absent", blocked
    assert any(e.startswith("alg-pasv-crlf:") and "connected" in e and "failed" not in e
               for e in blocked["evidence"]), blocked["evidence"]
    # On the other control port no helper watches: that data connection is dropped.
    assert any(e.startswith("alg-pasv-other-port:") and "failed" in e for e in blocked["evidence"]), \
        blocked["evidence"]
