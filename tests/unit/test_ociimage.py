"""The OCI archives the Kubernetes lab imports into containerd: every digest and size
matches its blob, and the index names the image as containerd reads it."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

from routed.lab import ociimage


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def blob(files, desc) -> bytes:
    data = files["blobs/sha256/" + desc["digest"].split(":", 1)[1]]
    assert desc["digest"] == "sha256:" + hashlib.sha256(data).hexdigest() and desc["size"] == len(data)
    return data


def test_archive_is_a_consistent_oci_layout():
    data = ociimage.archive("localhost/routed/x:2", [ociimage.Entry("bin/tool", b"#!x", 0o755),
                                                      ociimage.Entry("bin/alias", link="tool")], ["/bin/tool"])
    files = members(data)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = json.loads(files["index.json"])["manifests"]
    assert entry["annotations"] == {"io.containerd.image.name": "localhost/routed/x:2",
                                    "org.opencontainers.image.ref.name": "2"}
    manifest = json.loads(blob(files, entry))
    config = json.loads(blob(files, manifest["config"]))
    (layer_desc,) = manifest["layers"]
    layer = blob(files, layer_desc)
    assert config["rootfs"]["diff_ids"] == [layer_desc["digest"]]  # uncompressed: diff id = digest
    assert config["config"]["Entrypoint"] == ["/bin/tool"] and config["os"] == "linux"
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        tool, alias = tar.getmember("bin/tool"), tar.getmember("bin/alias")
        assert tar.getmember("bin").isdir() and tool.mode == 0o755 and tar.extractfile(tool).read() == b"#!x"
        assert alias.issym() and alias.linkname == "tool"


def test_untagged_name_is_latest():
    files = members(ociimage.archive("localhost/plain", [ociimage.Entry("a", b"")], ["/a"]))
    (entry,) = json.loads(files["index.json"])["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
