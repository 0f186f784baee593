"""What every routed program shares at run time, so no program borrows another's CLI:
logging (`logs`), the local /healthz, /readyz and /metrics server (`health`), and
how a command's result or error reaches the user (`command`).

Used by `routed agent`, `routed controller`, `routed bgp-speaker`, `routed lab`,
`routed install-cni` and `routedctl`.
"""
