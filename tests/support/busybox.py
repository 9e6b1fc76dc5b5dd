"""A tiny local Docker image for tests, built without any registry.

No image can be pulled in the test environments, so :func:`ensure_busybox_image`
builds one with ``docker import`` from a root filesystem tar that holds the
static busybox binary of the Debian package ``busybox-static`` and a few
applet symlinks. The image is built once per engine and reused afterwards.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker
import docker.errors

#: Where Debian's ``busybox-static`` installs the static binary.
BUSYBOX = Path("/bin/busybox")

#: Applets reachable by name in the image (``/bin/<name>`` -> ``busybox``).
APPLETS = (
    "sh",
    "sleep",
    "cat",
    "cp",
    "ls",
    "echo",
    "head",
    "tail",
    "env",
    "mkdir",
    "true",
    "false",
    "id",
    "rm",
)


def _ensure_busybox_binary() -> Path:
    """The static busybox binary, installing ``busybox-static`` when root.

    Raises:
        RuntimeError: the binary is missing and cannot be installed here.
    """
    if BUSYBOX.is_file():
        return BUSYBOX
    if os.geteuid() != 0:
        raise RuntimeError(
            f"{BUSYBOX} is missing; install the Debian package busybox-static "
            "(apt-get install -y busybox-static) to build the test image"
        )
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"{BUSYBOX} is missing and apt-get is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "install", "-y", "busybox-static"], check=True, env=env)
    if not BUSYBOX.is_file():
        raise RuntimeError(f"busybox-static was installed but {BUSYBOX} is still missing")
    return BUSYBOX


def _add_text(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _write_rootfs(path: Path, busybox: Path) -> None:
    """Write the image's root filesystem as a tar file at ``path``."""
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "etc", "share", "usr", "usr/bin"):
            _add_dir(tar, d)
        # sticky, world-writable: plugins running as another user need a /tmp
        _add_dir(tar, "tmp", 0o1777)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        _add_text(tar, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:\n")
        _add_text(tar, "etc/group", "root:x:0:\nnogroup:x:65534:\n")


def ensure_busybox_image(client: docker.DockerClient, tag: str = "chris-test/busybox:1") -> str:
    """Build (once) and return a tiny busybox image tagged ``tag``.

    The image is reused when the engine has it already.

    Raises:
        RuntimeError: the busybox binary is missing and cannot be installed.
        docker.errors.APIError: the engine refused the import.
    """
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    busybox = _ensure_busybox_binary()
    repository, _, version = tag.rpartition(":")
    if not repository or "/" in version:  # no explicit tag in ``tag``
        repository, version = tag, "latest"
    with tempfile.TemporaryDirectory(prefix="busybox-image-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        _write_rootfs(rootfs, busybox)
        # import_image_from_file streams the tar; it is never held in memory
        client.api.import_image_from_file(
            str(rootfs),
            repository=repository,
            tag=version,
            changes=["ENV PATH=/bin:/usr/bin", 'CMD ["/bin/sh"]'],
        )
    client.images.get(tag)  # raises if the import silently produced nothing
    return tag
