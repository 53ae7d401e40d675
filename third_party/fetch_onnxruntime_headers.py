"""Fetches the ONNX Runtime C API headers from Debian's ``libonnxruntime-dev`` package (trixie).

    python third_party/fetch_onnxruntime_headers.py DEST_DIR

Downloads the suite's signed ``InRelease``, the ``Packages`` index it lists and the package's
``.deb`` from the Debian mirror the machine's apt sources already use (``deb.debian.org`` if none;
the ``SPARSECPU_DEBIAN_MIRROR`` environment variable overrides both, e.g. with a local mirror),
checks every hash along that chain (and the ``InRelease`` signature when ``gpgv`` and the Debian
archive keyring are installed), and unpacks only ``usr/include/onnxruntime/*.h`` into
``DEST_DIR/onnxruntime/``. The system's apt configuration and state are never touched. Prints the
include directory (the one holding ``onnxruntime_c_api.h``) on success; on failure exits non-zero
with one line on stderr saying why. It runs inside CMake's configure step, so an unreachable mirror
must fail in seconds, not hang: every socket operation times out after ``TIMEOUT`` seconds. Uses only
the standard library so that it runs wherever the build's Python does.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request

SUITE = "trixie"
PACKAGE = "libonnxruntime-dev"
ARCH = "amd64"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Seconds any one connect or read may wait (not a limit on a whole download): a mirror that drops
# packets fails the configure step this quickly, a slow but live one still delivers Packages.xz (~10 MB).
TIMEOUT = 20


def mirror() -> str:
    """``SPARSECPU_DEBIAN_MIRROR``, else the first Debian archive URI in the apt sources (not the
    security archive), else deb.debian.org."""
    if os.environ.get("SPARSECPU_DEBIAN_MIRROR"):
        return os.environ["SPARSECPU_DEBIAN_MIRROR"].rstrip("/")
    uris = []
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*")):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        uris += re.findall(r"^\s*URIs:\s*(\S+)", text, re.M)
        uris += re.findall(r"^\s*deb(?:\s+\[[^\]]*\])?\s+(\S+)", text, re.M)
    for uri in uris:
        if re.search(r"/debian/?$", uri) and "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return r.read()
    except (OSError, http.client.HTTPException) as e:  # HTTP error, DNS failure, refused, timed out, cut off
        reason = e.reason if type(e) is urllib.error.URLError else e
        sys.exit(f"cannot download {url}: {reason}")


def check_signature(inrelease: bytes, workdir: str) -> None:
    """Verifies InRelease with gpgv when both it and the keyring are there; the hashes below then
    tie the .deb to Debian's signature. Without them only the hash chain is checked."""
    gpgv = shutil.which("gpgv")
    if not gpgv or not os.path.exists(KEYRING):
        print("note: gpgv or the Debian keyring is missing; checking hashes only", file=sys.stderr)
        return
    path = os.path.join(workdir, "InRelease")
    with open(path, "wb") as f:
        f.write(inrelease)
    r = subprocess.run([gpgv, "--keyring", KEYRING, path], capture_output=True)
    if r.returncode != 0:
        sys.exit(f"InRelease signature check failed:\n{r.stderr.decode(errors='replace')}")


def sha256_listed(release: str, name: str) -> tuple[str, int]:
    """The SHA256 and size InRelease lists for `name`."""
    section = release.split("SHA256:", 1)[1]
    for line in section.splitlines()[1:]:
        if not line.startswith(" "):
            break
        digest, size, path = line.split()
        if path == name:
            return digest, int(size)
    sys.exit(f"{name} not listed in InRelease")


def checked(data: bytes, digest: str, what: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != digest:
        sys.exit(f"SHA256 mismatch for {what}")
    return data


def ar_members(deb: bytes) -> dict[str, bytes]:
    """Members of a .deb (an ar archive)."""
    if not deb.startswith(b"!<arch>\n"):
        sys.exit("the downloaded .deb is not an ar archive")
    pos, out = 8, {}
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        out[name] = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def open_data_tar(members: dict[str, bytes]) -> tarfile.TarFile:
    for name, data in members.items():
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                zstd = shutil.which("zstd")
                if not zstd:
                    sys.exit("the package's data is zstd-compressed and no zstd command is installed")
                data = subprocess.run([zstd, "-dc"], input=data, capture_output=True, check=True).stdout
                return tarfile.open(fileobj=io.BytesIO(data), mode="r:")
            return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    sys.exit("no data.tar member in the .deb")


def main() -> int:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    dest = os.path.abspath(sys.argv[1])
    base = mirror()
    print(f"fetching {PACKAGE} ({SUITE}, {ARCH}) from {base}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        inrelease = get(f"{base}/dists/{SUITE}/InRelease")
        check_signature(inrelease, tmp)
        release = inrelease.decode("utf-8", errors="replace")
        index_name = f"main/binary-{ARCH}/Packages.xz"
        digest, _ = sha256_listed(release, index_name)
        index = lzma.decompress(checked(get(f"{base}/dists/{SUITE}/{index_name}"), digest, index_name))
        stanza = next(
            (s for s in index.decode("utf-8", errors="replace").split("\n\n") if s.startswith(f"Package: {PACKAGE}\n")),
            None,
        )
        if stanza is None:
            sys.exit(f"{PACKAGE} not found in {SUITE}'s index")
        fields = dict(re.findall(r"^(\w[\w-]*): (.*)$", stanza, re.M))
        deb = checked(get(f"{base}/{fields['Filename']}"), fields["SHA256"], fields["Filename"])
    out = os.path.join(dest, "onnxruntime")
    os.makedirs(out, exist_ok=True)
    n = 0
    with open_data_tar(ar_members(deb)) as tar:
        for m in tar.getmembers():
            path = m.name.lstrip("./")
            if m.isfile() and path.startswith("usr/include/onnxruntime/") and path.endswith(".h") and "/" not in path[24:]:
                with tar.extractfile(m) as src, open(os.path.join(out, os.path.basename(path)), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                n += 1
    if not os.path.exists(os.path.join(out, "onnxruntime_c_api.h")):
        sys.exit(f"{PACKAGE} {fields.get('Version')} has no usr/include/onnxruntime/onnxruntime_c_api.h")
    with open(os.path.join(dest, "VERSION"), "w") as f:
        f.write(f"{PACKAGE} {fields.get('Version')} ({SUITE})\n")
    print(f"unpacked {n} headers of {PACKAGE} {fields.get('Version')}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
