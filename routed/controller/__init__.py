"""The GC controller (`routed controller`): releases the IPAM state of deleted Kubernetes
nodes and pods; one replica works at a time (leader election through an etcd lease)."""
