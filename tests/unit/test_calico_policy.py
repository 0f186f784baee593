"""projectcalico.org/v3 NetworkPolicy and GlobalNetworkPolicy, written the way Calico's
reference and how-to pages write them, become routed.io/v1 policies; what routed lacks
(tiers, service accounts, Service and HTTP matches, untracked/pre-DNAT policy) is refused
by name, in one line, with its path."""

from __future__ import annotations

import pytest

from routed.errors import InvalidResource
from routed.resources import GlobalNetworkPolicy, NetworkPolicy, load_documents, parse
from routed.resources.calico import to_routed


def converted(text: str) -> list:
    return [parse(to_routed(doc)) for doc in load_documents(text)]


def refused(text: str) -> str:
    with pytest.raises(InvalidResource) as err:
        converted(text)
    message = str(err.value)
    assert "\n" not in message
    return message


# Calico reference's sample, as its page writes it (tests/integration/test_cli_policy.py applies it too).
SAMPLE_NETWORKPOLICY = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-tcp-6379
  namespace: production
spec:
  selector: role == 'database'
  types:
    - Ingress
    - Egress
  ingress:
    - action: Allow
      metadata:
        annotations:
          from: frontend
          to: database
      protocol: TCP
      source:
        selector: role == 'frontend'
      destination:
        ports:
          - 6379
  egress:
    - action: Allow
"""


def test_networkpolicy_sample_keeps_its_namespace_and_drops_rule_annotations():
    (p,) = converted(SAMPLE_NETWORKPOLICY)
    assert isinstance(p, NetworkPolicy) and p.namespace == "production" and p.name == "allow-tcp-6379"
    assert p.spec.selector == "role == 'database'" and p.spec.types == ["Ingress", "Egress"]
    (rule,) = p.spec.ingress
    assert rule.action == "Allow" and rule.protocol == "TCP" and rule.destination.ports == [6379]
    assert rule.source.selector == "role == 'frontend'"
    assert [e.action for e in p.spec.egress] == ["Allow"]


def test_globalnetworkpolicy_samples():
    webserver, deny = converted("""
- apiVersion: projectcalico.org/v3
  kind: GlobalNetworkPolicy
  metadata:
    name: webserver
  spec:
    selector: "role==\\"webserver\\""
    order: 100
    ingress:
    - action: Allow
      protocol: TCP
      destination:
        ports: [80]
    egress:
    - action: Allow
- apiVersion: projectcalico.org/v3
  kind: GlobalNetworkPolicy
  metadata:
    name: default.deny-icmp-except-ping
  spec:
    tier: default
    order: 200.5
    namespaceSelector: has(projectcalico.org/name) && projectcalico.org/name not in {"kube-system"}
    types:
    - Ingress
    - Egress
    doNotTrack: false
    preDNAT: false
    applyOnForward: false
    performanceHints: [AssumeNeededOnEveryNode]
    ingress:
    - action: Allow
      protocol: ICMP
      icmp:
        type: 8
    - action: Deny
      protocol: ICMP
      notICMP:
        type: 8
        code: 0
    - action: Allow
      protocol: UDP
      source:
        nets: [10.0.0.0/8]
        notNets: [10.1.0.0/16]
      destination:
        notPorts: ["8000:8080", dns]
    egress:
    - action: Pass
      ipVersion: 4
""")
    assert isinstance(webserver, GlobalNetworkPolicy) and webserver.spec.order == 100
    assert webserver.spec.types == ["Ingress", "Egress"]  # Calico's default with both rule lists
    assert isinstance(deny, GlobalNetworkPolicy) and deny.spec.order == 200.5
    assert deny.spec.namespace_selector.startswith("has(projectcalico.org/name)")
    icmp, not_icmp, udp = deny.spec.ingress
    assert icmp.icmp.type == 8 and not_icmp.not_icmp.code == 0
    assert udp.source.not_nets == ["10.1.0.0/16"] and udp.destination.not_ports == ["8000:8080", "dns"]
    assert deny.spec.egress[0].action == "Pass" and deny.spec.egress[0].ip_version == 4


POLICY = """
apiVersion: projectcalico.org/v3
kind: {kind}
metadata:
  name: p
  namespace: prod
spec:
  selector: app == 'api'
  {field}
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: app == 'web'
    destination:
      ports: [8080]
"""


@pytest.mark.parametrize("kind, field, named", [
    ("NetworkPolicy", "tier: security", 'spec.tier: "security" is not supported by routed'),
    ("NetworkPolicy", "serviceAccountSelector: role == 'x'", "spec.serviceAccountSelector: not supported"),
    ("NetworkPolicy", "performanceHints: [Fast]", "spec.performanceHints:"),
    ("NetworkPolicy", "egress: [{action: Allow, http: {methods: [GET]}}]", "spec.egress[0].http: not supported"),
    ("NetworkPolicy", "egress: [{action: Allow, destination: {services: {name: db, namespace: prod}}}]",
     "spec.egress[0].destination.services: not supported"),
    ("NetworkPolicy", "egress: [{action: Allow}, {action: Deny, source: {serviceAccounts: {names: [a]}}}]",
     "spec.egress[1].source.serviceAccounts: not supported"),
    ("NetworkPolicy", "egress: [{action: Allow, metadata: {labels: {a: b}}}]", "spec.egress[0].metadata.labels:"),
    ("NetworkPolicy", "egress: [{action: Allow, destination: {nets: [10.0.0.0/8], sorce: x}}]",
     "spec.egress[0].destination.sorce: unknown Calico field"),
    ("GlobalNetworkPolicy", "doNotTrack: true", "spec.doNotTrack: true is not supported by routed"),
    ("GlobalNetworkPolicy", "preDNAT: true", "spec.preDNAT: true is not supported"),
    ("GlobalNetworkPolicy", "applyOnForward: true", "spec.applyOnForward: true is not supported"),
])
def test_what_routed_lacks_is_refused_by_name(kind, field, named):
    text = POLICY.format(kind=kind, field=field)
    if kind == "GlobalNetworkPolicy":
        text = text.replace("  namespace: prod\n", "")
    message = refused(text)
    assert message.startswith(f'{kind} "p" (projectcalico.org/v3): {named.split(":")[0]}:'), message
    assert named in message, message


def test_routed_validation_still_names_the_field_after_conversion():
    message = refused(POLICY.format(kind="NetworkPolicy", field="").replace("    protocol: TCP\n", ""))
    assert 'NetworkPolicy "p": spec.ingress[0].destination.ports: ports need protocol' in message, message


def test_calicos_implicit_namespace_labels_select_as_in_calico():
    """Calico gives every namespace the label projectcalico.org/name and every pod
    projectcalico.org/namespace; its docs select namespaces with them in GlobalNetworkPolicy.
    Without them such a policy would select nothing, silently."""
    from routed.policy import model

    (gnp,) = converted("""
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: prod-db
spec:
  selector: projectcalico.org/namespace == "prod" && app == "db"
  ingress:
  - action: Allow
    source:
      namespaceSelector: projectcalico.org/name == "web"
""")
    (policy,) = model.convert([gnp])
    db = model.Endpoint("prod", "db-0", {"app": "db"}, ("10.0.0.1",))
    assert policy.selection.matches(db, {})
    assert not policy.selection.matches(model.Endpoint("dev", "db-0", {"app": "db"}, ("10.0.0.2",)), {})
    source = policy.ingress[0].source.selection
    assert source.matches(model.Endpoint("web", "w", {}, ("10.0.0.3",)), {})
    assert not source.matches(model.Endpoint("prod", "w", {}, ("10.0.0.4",)), {})
