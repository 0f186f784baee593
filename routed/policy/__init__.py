"""Network policy: the model every kind of policy is converted to (model.py), the
reference evaluation of one packet (evaluate.py) and the nftables ruleset that enforces
the same thing for one node's pods (nft.py). No I/O here."""
