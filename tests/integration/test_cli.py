"""routedctl's resource commands, run as the installed console script against a real etcd."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.etcd import free_port

pytestmark = pytest.mark.etcd

ROUTEDCTL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "routedctl")


def routedctl(env: dict, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    # Only the test's etcd settings: a developer's own ROUTED_ETCD_* must not leak in.
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROUTED_ETCD_")}
    return subprocess.run([ROUTEDCTL, *args], env={**base, **env}, input=input, capture_output=True,
                          text=True, timeout=60)


def ok(env: dict, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    proc = routedctl(env, *args, input=input)
    assert proc.returncode == 0, proc.stderr
    return proc


def fails(env: dict, *args: str, input: str | None = None) -> str:
    """The one-line error of a failing command."""
    proc = routedctl(env, *args, input=input)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("routedctl: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def pool_doc(name: str, cidr: str, **spec) -> dict:
    return {"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": name},
            "spec": {"cidr": cidr, **spec}}


def dump(*docs: dict) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def pools(env: dict) -> dict[str, dict]:
    listed = json.loads(ok(env, "get", "ippools", "-o", "json").stdout)
    assert listed["kind"] == "List"
    return {p["metadata"]["name"]: p for p in listed["items"]}


@pytest.fixture
def env(etcd):
    return etcd.env()


# -- apply and get ---------------------------------------------------------------------


def test_apply_file_then_get_json_round_trips(env, tmp_path):
    f = tmp_path / "pool.yaml"
    f.write_text(dump(pool_doc("pool-a", "10.244.0.0/16", blockSize=24, vxlanMode="CrossSubnet",
                               natOutgoing=True)))
    assert ok(env, "apply", "-f", str(f)).stdout.strip() == "ippool/pool-a created"
    got = pools(env)["pool-a"]
    assert got["spec"] == {"cidr": "10.244.0.0/16", "blockSize": 24, "ipipMode": "Never",
                           "vxlanMode": "CrossSubnet", "natOutgoing": True, "disabled": False,
                           "nodeSelector": "all()"}
    assert got["metadata"]["uid"] and got["metadata"]["resourceVersion"]
    one = json.loads(ok(env, "get", "ippool", "pool-a", "-o", "json").stdout)
    assert one == got
    # Applying the same file again is an update, not an error.
    assert ok(env, "apply", "-f", str(f)).stdout.strip() == "ippool/pool-a configured"
    assert pools(env)["pool-a"]["metadata"]["uid"] == got["metadata"]["uid"]


def test_get_yaml_pipes_back_into_apply(env):
    ok(env, "apply", "-f", "-", input=dump(pool_doc("a", "10.1.0.0/16"), pool_doc("b", "10.2.0.0/16", disabled=True)))
    before = pools(env)
    listed = ok(env, "get", "ippools", "-o", "yaml").stdout
    # Unchanged: every pool is "configured" and keeps its identity.
    out = ok(env, "apply", "-f", "-", input=listed).stdout.split("\n")
    assert "ippool/a configured" in out and "ippool/b configured" in out
    assert {n: p["metadata"]["uid"] for n, p in pools(env).items()} == {
        n: p["metadata"]["uid"] for n, p in before.items()}
    # Gone, then recreated from the same text with the same specs.
    ok(env, "delete", "ippool", "a")
    ok(env, "delete", "ippool", "b")
    assert pools(env) == {}
    assert "ippool/b created" in ok(env, "apply", "-f", "-", input=listed).stdout
    assert {n: p["spec"] for n, p in pools(env).items()} == {n: p["spec"] for n, p in before.items()}


def test_overlapping_pool_is_refused_and_nothing_written(env):
    ok(env, "apply", "-f", "-", input=dump(pool_doc("first", "10.1.0.0/16")))
    line = fails(env, "apply", "-f", "-", input=dump(pool_doc("second", "10.1.128.0/17")))
    assert '"second"' in line and '"first"' in line and "overlaps" in line
    assert set(pools(env)) == {"first"}


def test_multi_document_apply_with_an_invalid_document_writes_nothing(env, tmp_path):
    f = tmp_path / "two.yaml"
    f.write_text(dump(pool_doc("good", "10.1.0.0/16"), pool_doc("bad", "10.2.0.0/33")))
    line = fails(env, "apply", "-f", str(f))
    assert str(f) in line and "document 2" in line and "10.2.0.0/33" in line
    assert pools(env) == {}


def test_a_write_failure_in_document_two_rolls_back_document_one(env):
    ok(env, "apply", "-f", "-", input=dump(pool_doc("existing", "10.1.0.0/16")))
    # Document 1 is valid and written; document 2 overlaps "existing", found only when written.
    line = fails(env, "apply", "-f", "-", input=dump(pool_doc("new", "10.2.0.0/16"),
                                                    pool_doc("clash", "10.1.0.0/24")))
    assert "overlaps" in line and "rolled back: ippool/new" in line
    assert set(pools(env)) == {"existing"}


def test_a_rolled_back_update_restores_the_previous_spec(env):
    ok(env, "apply", "-f", "-", input=dump(pool_doc("keep", "10.1.0.0/16"), pool_doc("other", "10.5.0.0/16")))
    uid = pools(env)["keep"]["metadata"]["uid"]
    line = fails(env, "apply", "-f", "-", input=dump(pool_doc("keep", "10.1.0.0/16", natOutgoing=True),
                                                    pool_doc("clash", "10.5.1.0/24")))
    assert "rolled back: ippool/keep" in line
    keep = pools(env)["keep"]
    assert keep["spec"]["natOutgoing"] is False and keep["metadata"]["uid"] == uid


# -- create, replace, delete, patch ----------------------------------------------------


def test_create_twice_is_already_exists(env):
    text = dump(pool_doc("p", "10.1.0.0/16"))
    assert ok(env, "create", "-f", "-", input=text).stdout.strip() == "ippool/p created"
    line = fails(env, "create", "-f", "-", input=text)
    assert line == 'routedctl: IPPool "p" already exists'


def test_replace_needs_an_existing_resource(env):
    line = fails(env, "replace", "-f", "-", input=dump(pool_doc("ghost", "10.1.0.0/16")))
    assert line == 'routedctl: IPPool "ghost" not found'
    assert pools(env) == {}
    ok(env, "create", "-f", "-", input=dump(pool_doc("ghost", "10.1.0.0/16")))
    assert ok(env, "replace", "-f", "-", input=dump(pool_doc("ghost", "10.1.0.0/16", disabled=True))
              ).stdout.strip() == "ippool/ghost replaced"
    assert pools(env)["ghost"]["spec"]["disabled"] is True


def test_delete_by_name_and_by_file(env, tmp_path):
    f = tmp_path / "pools.yaml"
    f.write_text(dump(pool_doc("a", "10.1.0.0/16"), pool_doc("b", "10.2.0.0/16"), pool_doc("c", "10.3.0.0/16")))
    ok(env, "apply", "-f", str(f))
    assert ok(env, "delete", "ippool", "a").stdout.strip() == "ippool/a deleted"
    assert set(pools(env)) == {"b", "c"}
    assert fails(env, "delete", "ippool", "a") == 'routedctl: IPPool "a" not found'
    # The file still names "a": without --skip-not-found that is an error.
    assert 'IPPool "a" not found' in fails(env, "delete", "-f", str(f))
    out = ok(env, "delete", "-f", str(f), "--skip-not-found").stdout
    assert "ippool/b deleted" in out and "ippool/c deleted" in out
    assert pools(env) == {}
    assert "KIND NAME or -f" in fails(env, "delete", "ippool")


def test_patch_valid_invalid_json_and_immutable_field(env):
    ok(env, "apply", "-f", "-", input=dump(pool_doc("p", "10.1.0.0/16")))
    out = ok(env, "patch", "ippool", "p", "-p", '{"spec": {"disabled": true}}').stdout.splitlines()
    # -o table shows the patched resource as a table, like get (not its JSON).
    assert out[0] == "ippool/p patched" and out[1].split() == ["NAME", "CIDR", "SELECTOR"]
    assert out[2].split() == ["p", "10.1.0.0/16", "all()"]
    patched = json.loads(ok(env, "patch", "ippool", "p", "-p", '{"spec": {"natOutgoing": true}}', "-o", "json").stdout)
    assert patched["spec"]["natOutgoing"] is True
    assert pools(env)["p"]["spec"]["disabled"] is True

    assert "not valid JSON" in fails(env, "patch", "ippool", "p", "-p", "{spec: nope")
    assert "must be a JSON object" in fails(env, "patch", "ippool", "p", "-p", "[1]")
    line = fails(env, "patch", "ippool", "p", "-p", '{"spec": {"cidr": "10.7.0.0/16"}}')
    assert "spec.cidr is immutable" in line
    assert "blockSize" in fails(env, "patch", "ippool", "p", "-p", '{"spec": {"blockSize": 99}}')
    assert "not found" in fails(env, "patch", "ippool", "nope", "-p", '{"spec": {"disabled": true}}')
    assert pools(env)["p"]["spec"]["cidr"] == "10.1.0.0/16"
    assert pools(env)["p"]["spec"]["blockSize"] == 26


# -- output formats ----------------------------------------------------------------------

# kind, plural, document, (table header, a cell it shows), (a header only -o wide adds, its cell)
KINDS = [
    ("IPPool", "ippools", pool_doc("pool-a", "10.244.0.0/16"), ("CIDR", "10.244.0.0/16"), ("BLOCKSIZE", "26")),
    ("IPAMConfig", "ipamconfigs", {"apiVersion": "routed.io/v1", "kind": "IPAMConfig", "metadata": {"name": "default"},
                                   "spec": {"strictAffinity": True, "maxBlocksPerHost": 7}},
     ("MAXBLOCKSPERHOST", "7"), ("AUTOALLOCATEBLOCKS", "True")),
    ("BGPConfiguration", "bgpconfigurations", {"apiVersion": "routed.io/v1", "kind": "BGPConfiguration",
                                               "metadata": {"name": "default"}, "spec": {"asNumber": 64513}},
     ("ASN", "64513"), ("LOGSEVERITY", "Info")),
    ("BGPPeer", "bgppeers", {"apiVersion": "routed.io/v1", "kind": "BGPPeer", "metadata": {"name": "tor-1"},
                             "spec": {"peerIP": "192.0.2.1", "asNumber": 64600}},
     ("PEERIP", "192.0.2.1"), ("KEEPALIVE", "30")),
    ("Node", "nodes", {"apiVersion": "routed.io/v1", "kind": "Node", "metadata": {"name": "node-1",
                                                                                 "labels": {"rack": "r1"}},
                       "spec": {"bgp": {"ipv4Address": "192.0.2.10/24"}}},
     ("IPV4", "192.0.2.10/24"), ("LABELS", "rack=r1")),
]


@pytest.mark.parametrize("kind,plural,doc,shown,wide", KINDS, ids=[k[0] for k in KINDS])
def test_every_kind_in_every_output_format(env, kind, plural, doc, shown, wide):
    name = doc["metadata"]["name"]
    assert ok(env, "apply", "-f", "-", input=dump(doc)).stdout.strip() == f"{kind.lower()}/{name} created"
    (header, cell), (wide_header, wide_cell) = shown, wide

    table = ok(env, "get", plural).stdout.splitlines()
    assert table[0].split()[0] == "NAME" and header in table[0].split() and wide_header not in table[0]
    assert table[1].split()[0] == name and cell in table[1].split()

    lines = ok(env, "get", plural, "-o", "wide").stdout.splitlines()
    assert header in lines[0].split() and wide_header in lines[0].split()
    assert lines[1].startswith(table[1]) and wide_cell in lines[1].split()[len(table[1].split()):]

    listed = yaml.safe_load(ok(env, "get", plural, "-o", "yaml").stdout)
    assert listed["kind"] == "List" and [i["metadata"]["name"] for i in listed["items"]] == [name]
    assert listed["items"][0]["kind"] == kind
    # The global flag works before the command as well as after it.
    one = json.loads(ok(env, "-o", "json", "get", plural, name).stdout)
    assert one["kind"] == kind and one["spec"].items() >= doc["spec"].items()


def test_unknown_kind(env):
    line = fails(env, "get", "widgets")
    assert 'unknown resource type "widgets"' in line and "ippools" in line
    line = fails(env, "apply", "-f", "-", input=dump({"apiVersion": "routed.io/v1", "kind": "Widget",
                                                      "metadata": {"name": "w"}, "spec": {}}))
    assert 'unknown kind "Widget"' in line


# -- errors --------------------------------------------------------------------------------


def test_errors_are_one_line_and_debug_adds_the_traceback(env):
    line = fails(env, "get", "ippool", "missing")
    assert line == 'routedctl: IPPool "missing" not found'
    proc = routedctl(env, "--debug", "get", "ippool", "missing")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "NotFound" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == 'routedctl: IPPool "missing" not found'
    # --debug is also accepted after the command.
    assert "Traceback" in routedctl(env, "get", "ippool", "missing", "--debug").stderr


def test_an_unreachable_endpoint_is_named(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    line = fails({"ROUTED_ETCD_ENDPOINTS": endpoint}, "get", "ippools")
    assert endpoint in line and "cannot reach etcd" in line
    line = fails({}, "--etcd-endpoints", endpoint, "get", "ippools")
    assert endpoint in line


def test_mutual_tls_from_the_environment(etcd_tls):
    env = etcd_tls.env()
    assert env["ROUTED_ETCD_ENDPOINTS"].startswith("https://")
    ok(env, "apply", "-f", "-", input=dump(pool_doc("tls", "10.1.0.0/16")))
    assert set(pools(env)) == {"tls"}
    # Without the client certificate the server refuses: still one line naming the endpoint.
    no_cert = {k: v for k, v in env.items() if k not in ("ROUTED_ETCD_CERT", "ROUTED_ETCD_KEY")}
    assert etcd_tls.url in fails(no_cert, "get", "ippools")
    # A plain-http client of the TLS port gets nothing either.
    plain = {"ROUTED_ETCD_ENDPOINTS": etcd_tls.url.replace("https://", "http://")}
    fails(plain, "get", "ippools")


def test_a_malformed_yaml_file_is_named(env, tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("apiVersion: routed.io/v1\nkind: IPPool\nmetadata: {name: a\nspec: [\n")
    line = fails(env, "apply", "-f", str(f))
    assert str(f) in line and "invalid YAML" in line and "line" in line
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"apiVersion": "routed.io/v1", "kind": "IPPool"\n')
    line = fails(env, "create", "-f", str(bad_json))
    assert str(bad_json) in line and "invalid JSON" in line
    assert pools(env) == {}


def test_a_missing_file(env, tmp_path):
    missing = tmp_path / "nope.yaml"
    line = fails(env, "apply", "-f", str(missing))
    assert line == f"routedctl: cannot read {missing}: No such file or directory"
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n---\n")
    assert fails(env, "apply", "-f", str(empty)) == f"routedctl: {empty}: no resources found"


def test_get_lists_the_good_records_and_names_a_corrupt_one(env, etcd):
    """One record that does not parse (garbage under its key, or written before today's
    validation) hides nothing else: get lists the rest and names the bad key in one line."""
    from routed.datastore import keys

    ok(env, "apply", "-f", "-", input=dump(pool_doc("good-a", "10.1.0.0/16"), pool_doc("good-b", "10.2.0.0/16")))
    client = etcd.client()
    try:
        client.put(keys.resource("ippools", "broken"), b"{not json")
    finally:
        client.close()
    proc = ok(env, "get", "ippools")
    assert "good-a" in proc.stdout and "good-b" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    notes = [line for line in proc.stdout.splitlines() if "broken" in line]
    assert len(notes) == 1 and "/routed/v1/resources/ippools/broken" in notes[0] and "not JSON" in notes[0], notes
    assert set(pools(env)) == {"good-a", "good-b"}
