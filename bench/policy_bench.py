"""Programming network policy for 1,000 local pods × 200 policies on one node.

    ours        compile (model.convert + nft.compile_node) and one `nft -f` of the table
    reference   kube-router's approach: `ipset restore` of one set per selector and
                `iptables-restore` of per-pod firewall chains that jump to per-policy
                chains (one jump per pod and applicable policy), the same policies

Prints seconds (median of REPEATS, ours and the reference alternating) and rule counts;
ours grows with pods + policies, the reference with pods × policies. Everything happens
in a netns of its own (rt-bench-…), removed at the end. Prints only; never asserts.
"""

from __future__ import annotations

import secrets
import statistics
import subprocess
import time

from bench.common import note, report

PODS, POLICIES, APPS, REPEATS = 1000, 200, 20, 3


def _population():
    from routed import resources as r
    from routed.policy import model

    eps = [model.Endpoint(f"ns{i % 10}", f"p{i}", {"app": f"app{i % APPS}", "tier": f"t{i % 3}"},
                          (f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}",), f"cali{i:011d}")
           for i in range(PODS)]
    docs = [r.parse({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": f"np{j}", "namespace": f"ns{j % 10}"},
                     "spec": {"podSelector": {"matchLabels": {"app": f"app{j % APPS}"}},
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": f"t{j % 3}"}}}],
                                           "ports": [{"port": 80 + j % 50}]}]}})
            for j in range(POLICIES)]
    return docs, eps


def _ours(docs, eps, netns: str) -> tuple[float, int]:
    from routed.policy import model, nft

    start = time.monotonic()
    ruleset = nft.compile_node(model.convert(docs), eps, {}, eps)
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=ruleset.render(), text=True,
                   check=True, capture_output=True)
    return time.monotonic() - start, ruleset.rule_count


def _reference_input(docs, eps) -> tuple[str, str, int]:
    """(ipset restore input, iptables-restore input, rule count), as kube-router builds them."""
    from routed.policy import model

    policies = model.convert(docs)
    namespaces: dict = {}
    sets, lines, rules = [], ["*filter", ":KUBE-ROUTER-FORWARD - [0:0]"], 0
    for p in policies:
        chain = f"KUBE-NWPLCY-{p.key[:10].upper()}"
        lines.append(f":{chain} - [0:0]")
        for i, rule in enumerate(p.ingress or ()):
            sel = rule.source.selection
            name = f"KR-{p.key[:8]}-{i}"
            sets.append(f"create {name} hash:ip -exist")
            sets += [f"add {name} {a} -exist" for ep in eps if sel.matches(ep, namespaces) for a in ep.addresses]
            ports = ",".join(str(a) for a, _ in rule.destination.ports) or "1:65535"
            lines.append(f"-A {chain} -p tcp -m set --match-set {name} src -m multiport --dports {ports} -j ACCEPT")
            rules += 1
    for ep in eps:
        chain = f"KUBE-POD-FW-{ep.interface[4:].upper()}"
        lines.append(f":{chain} - [0:0]")
        lines.append(f"-A KUBE-ROUTER-FORWARD -o {ep.interface} -j {chain}")
        lines.append(f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        rules += 2
        applied = [p for p in policies if p.selection.matches(ep, namespaces)]
        for p in applied:
            lines.append(f"-A {chain} -j KUBE-NWPLCY-{p.key[:10].upper()}")
        if applied:
            lines.append(f"-A {chain} -j DROP")
        rules += len(applied) + bool(applied)
    lines.append("COMMIT")
    return "\n".join(sets) + "\n", "\n".join(lines) + "\n", rules


def _reference(ipsets: str, iptables: str, netns: str) -> float:
    start = time.monotonic()
    run = lambda cmd, text: subprocess.run(["ip", "netns", "exec", netns, *cmd], input=text,  # noqa: E731
                                           text=True, check=True, capture_output=True)
    run(["ipset", "restore"], ipsets)
    run(["iptables-restore", "-w"], iptables)
    return time.monotonic() - start


def main() -> None:
    docs, eps = _population()
    ipsets, iptables, ref_rules = _reference_input(docs, eps)
    netns = f"rt-bench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    ours, theirs, our_rules = [], [], 0
    try:
        for _ in range(REPEATS):
            seconds, our_rules = _ours(docs, eps, netns)
            ours.append(seconds)
            theirs.append(_reference(ipsets, iptables, netns))
            subprocess.run(["ip", "netns", "exec", netns, "iptables", "-w", "-F"], check=True)
            subprocess.run(["ip", "netns", "exec", netns, "iptables", "-w", "-X"], check=True)
            subprocess.run(["ip", "netns", "exec", netns, "ipset", "destroy"], check=True)
    finally:
        # ipsets are per netns; deleting the netns frees them with it.
        subprocess.run(["ip", "netns", "del", netns], check=False)
    note(f"{PODS} pods x {POLICIES} policies on one node (ours: compile + nft -f; "
         "reference: ipset restore + iptables-restore, rules as kube-router lays them out)")
    report("programming time (median)", statistics.median(ours) * 1000,
           statistics.median(theirs) * 1000, "ms")
    report("rules", our_rules, ref_rules, "rules")
