# The two commands a newcomer needs: `make lab` (the main job) and `make test`.
# Both install what they need first (Debian packages and .venv), idempotently.
VENV := .venv

.PHONY: setup lab lab-down test bench

setup:
	@bash scripts/setup.sh

lab: setup
	$(VENV)/bin/routed lab up

lab-down:
	$(VENV)/bin/routed lab down

test: setup
	$(VENV)/bin/pytest

bench: setup
	$(VENV)/bin/python -m bench
