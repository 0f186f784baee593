"""Benchmarks: each prints its figure next to a reference measured in the same run.

    python -m bench            every bench/*_bench.py, in turn
    python -m bench ipam       just bench/ipam_bench.py
    python -m bench --tmpfs    the private etcd on tmpfs instead of disk

Benchmarks print; they never assert.
"""
