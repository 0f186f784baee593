"""What taking routed off a node removes (pure: routed.dataplane.cleanup.plan) and whom the
uninstall hook still waits for (routed.datastore.uninstall.waiting_for)."""

from __future__ import annotations

from routed.dataplane import cleanup
from routed.dataplane.rtnl import Route
from routed.datastore import keys, uninstall


def test_plan_takes_our_protos_and_our_vxlan_device_only():
    pod = Route("10.70.0.5/32", dev="cali0123456789a", proto=201)
    hole = Route("10.70.0.0/26", kind="blackhole", proto=201)
    learned = Route("10.70.1.0/26", gateway="192.0.2.11", dev="vxlan.routed", onlink=True, proto=202)
    v6 = Route("fd00:70::/122", kind="blackhole", proto=201)
    theirs = [Route("0.0.0.0/0", gateway="192.0.2.1", proto=4), Route("10.0.0.0/8", dev="eth0", proto=3),
              Route("10.96.0.0/12", kind="blackhole", proto=186)]  # static, boot, bird
    plan = cleanup.plan(["/etc/cni/net.d/10-routed.conflist"], [learned, *theirs, pod, v6, hole],
                        [("vxlan.routed", "vxlan"), ("tunl0", "ipip"), ("flannel.1", "vxlan"), ("eth0", None)])
    assert set(plan.routes) == {pod, hole, learned, v6}
    assert [r.proto for r in plan.routes] == sorted(r.proto for r in plan.routes)  # ours first, then learned
    assert plan.links == ["vxlan.routed"]  # tunl0 belongs to the ipip module; flannel's to flannel
    assert plan.files == ["/etc/cni/net.d/10-routed.conflist"]
    assert not plan.empty


def test_a_device_named_ours_of_another_kind_is_left_alone():
    assert cleanup.plan([], [], [("vxlan.routed", "dummy")]).links == []


def test_a_clean_node_plans_nothing():
    assert cleanup.plan([], [Route("0.0.0.0/0", gateway="192.0.2.1", proto=4)], []).empty


def test_cni_files_are_what_install_cni_writes():
    assert cleanup.cni_files("/host/etc/cni/net.d", "/host/opt/cni/bin") == [
        "/host/etc/cni/net.d/10-routed.conflist", "/host/opt/cni/bin/routed"]


def test_describe_names_what_went_and_what_failed():
    report = cleanup.Report(cleanup.Plan(files=["/x/10-routed.conflist"],
                                         routes=[Route("10.70.0.0/26", kind="blackhole", proto=201)],
                                         links=["vxlan.routed"]), ["cannot remove /x/routed: Permission denied"])
    lines = cleanup.describe(report)
    assert "removed /x/10-routed.conflist" in lines
    assert "removed 1 route(s) of proto 201 and 0 of proto 202" in lines
    assert "removed device vxlan.routed" in lines
    assert lines[-1] == "failed: cannot remove /x/routed: Permission denied"


def test_the_hook_waits_for_registered_nodes_only():
    assert uninstall.waiting_for({"a", "b", "c"}, {"b", "gone"}) == ["a", "c"]
    assert uninstall.waiting_for(set(), set()) == []


def test_done_keys_live_under_the_uninstall_prefix():
    assert keys.uninstall_done("node-1").startswith(keys.UNINSTALL)
    assert keys.UNINSTALL_REQUESTED.startswith(keys.UNINSTALL)
    assert not keys.uninstall_done("node-1").startswith(keys.UNINSTALL_REQUESTED)
