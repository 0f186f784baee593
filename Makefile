# The two commands a newcomer needs: `make lab` (the main job) and `make test`.
# Both install what they need first (Debian packages and .venv), idempotently.
VENV := .venv

.PHONY: setup lab lab-down test bench

setup:
	@bash scripts/setup.sh

# A 4-node, 2-rack lab (BIRD ToRs, VXLAN across racks) with 2 pods per node: prints the
# status, the reachability matrix and two nodes' route tables, and stays up.
lab: setup
	$(VENV)/bin/routed lab up --pods 2

lab-down:
	$(VENV)/bin/routed lab down

test: setup
	$(VENV)/bin/pytest

bench: setup
	$(VENV)/bin/python -m bench
