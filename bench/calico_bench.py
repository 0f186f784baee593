"""Calico's CNI plugin and calico-ipam against routed on one etcd (issue 16), when they build.

scripts/build-calico.sh builds them from the Go module proxy at a pinned version, once; a
later run finds the binary or the recorded reason it did not build. Here they do not build
(the proxy does not serve github.com/projectcalico/api, a nested module of the pinned
calico module that its go.mod replaces with ./api), so this prints that reason and measures
nothing: there is no comparison code that could not be run. A failed build never fails
`make bench`: routed's own figures come from the other benchmarks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.common import note

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build-calico.sh"


def main() -> None:
    built = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    if built.returncode != 0:
        reason = (built.stderr.strip().splitlines() or ["no output"])[-1]
        note(f"calico: not measured; {reason}")
        return
    where = subprocess.run(["bash", str(SCRIPT), "--print-dir"], capture_output=True, text=True).stdout.strip()
    note(f"calico: built in {where}, but this benchmark has no comparison yet: build it where the "
         "proxy serves github.com/projectcalico/api and write one (ADD+DEL, a burst of 100, allocations/s)")


if __name__ == "__main__":
    main()
