"""Small OCI image archives written directly (no registry, no daemon): the pod sandbox
("pause") image and a busybox test image that the Kubernetes lab imports into each
node's containerd with `ctr -n k8s.io images import`.

One uncompressed layer, a config, a manifest and an index naming the image: what
`podman save --format oci-archive` produces, in the few lines this needs.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Entry:
    path: str  # inside the image, no leading slash
    data: bytes = b""
    mode: int = 0o755
    link: str = ""  # a symlink to this target instead of a file


def _tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(e.path).parent) for e in entries} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for e in entries:
            info = tarfile.TarInfo(e.path)
            if e.link:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, e.link, 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(e.data), e.mode
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def _blob(data: bytes, media_type: str) -> tuple[dict, bytes]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return {"mediaType": media_type, "digest": digest, "size": len(data)}, data


def archive(name: str, entries: list[Entry], entrypoint: list[str], cmd: list[str] | None = None) -> bytes:
    """An OCI archive (tar) of one linux/amd64 image called name (e.g. localhost/x:1)."""
    layer_desc, layer = _blob(_tar(entries), LAYER)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": entrypoint, "Cmd": cmd or [], "Env": ["PATH=/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
    config_desc, config_data = _blob(json.dumps(config, sort_keys=True).encode(), CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_desc, "layers": [layer_desc]}
    manifest_desc, manifest_data = _blob(json.dumps(manifest, sort_keys=True).encode(), MANIFEST)
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {"schemaVersion": 2, "manifests": [{
        **manifest_desc,
        # containerd names the image from the first; other tools read the second.
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}}]}
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index, sort_keys=True).encode()}
    for desc, data in ((layer_desc, layer), (config_desc, config_data), (manifest_desc, manifest_data)):
        files["blobs/sha256/" + desc["digest"].split(":", 1)[1]] = data
    return _tar([Entry(path, data, 0o644) for path, data in files.items()])


def pause_image(name: str, pause_binary: Path) -> bytes:
    return archive(name, [Entry("pause", Path(pause_binary).read_bytes())], ["/pause"])


BUSYBOX_APPLETS = ("sh", "sleep", "ping", "ip", "nc", "wget", "hostname", "cat", "ls", "echo", "httpd")


def busybox_image(name: str, busybox: Path = Path("/bin/busybox")) -> bytes:
    """Debian's static busybox (package busybox-static) with a few applets linked."""
    entries = [Entry("bin/busybox", Path(busybox).read_bytes())]
    entries += [Entry(f"bin/{a}", link="busybox") for a in BUSYBOX_APPLETS]
    return archive(name, entries, ["/bin/sh"])
