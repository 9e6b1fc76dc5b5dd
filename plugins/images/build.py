"""Build the reference plugin images without pulling anything from a registry.

Run it (as root, for mmdebstrap) with the project's virtualenv::

    .venv/bin/python plugins/images/build.py [--base-only] [--plugins pl-dircopy,...] [--rebuild]

or import it and call :func:`ensure_images`. Steps (see ``README.md`` here):

1. the base image ``chris-fabric/python-base:bookworm``: a minimal Debian
   bookworm root filesystem made by ``mmdebstrap`` (python3, python3-venv,
   ca-certificates) and ``docker import``-ed; skipped when it exists;
2. wheels, built on the host: the project itself (``pip wheel --no-deps``)
   and pydantic with its dependencies, pinned to the host's version, plus
   the wheels the recipes' ``requirements`` name (numpy, scipy, ... for the
   imaging plugins), likewise pinned; the
   host's Python must be 3.11 like bookworm's ``python3``, so binary wheels fit;
   a recipe's ``extra`` distributions (pl-infer's torch, numpy, nibabel,
   pydicom) get wheels of their own, at the host's versions, for its image only;
3. one image per plugin from its recipe ``<plugin>.Dockerfile`` (classic
   builder, ``FROM`` the local base, no network in ``RUN``), then the
   descriptor printed by ``<selfexec> --json`` *inside* that image is added as
   the label :data:`DESCRIPTOR_LABEL`.

A plugin image is rebuilt only when its fingerprint (base image id, recipe,
``pyproject.toml``, the versions of pydantic and of the recipe's
requirements, and the sources of ``chris_sdk`` and of the plugin's packages)
differs from the one in its :data:`FINGERPRINT_LABEL`, or with
``rebuild=True``; wheels are built only when some image is rebuilt.

The module logs (``logging``) and raises :class:`ImageBuildError`; only
:func:`main` writes to the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import docker
import docker.errors
from chris_sdk.descriptor import DescriptorError, PluginDescriptor
from docker.models.images import Image

log = logging.getLogger("chris_fabric.images")

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
#: Scratch space (wheels, build contexts); ignored by git as a ``build/`` dir.
DEFAULT_WORK_DIR = HERE / "build"

BASE_REPOSITORY = "chris-fabric/python-base"
BASE_TAG = "bookworm"
BASE_IMAGE = f"{BASE_REPOSITORY}:{BASE_TAG}"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: bookworm's python3; wheels are built by the host's Python, which must match.
IMAGE_PYTHON = (3, 11)

#: Image label holding the plugin's descriptor JSON (as printed by ``--json`` in the image).
DESCRIPTOR_LABEL = "org.chrisproject.descriptor"
#: Image label holding the build fingerprint (see the module docstring).
FINGERPRINT_LABEL = "org.chris-fabric.build.fingerprint"

#: Source-tree entries never copied into the wheel build (caches, VCS, venvs, tests).
_SOURCE_IGNORE = (
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".chris",
    "node_modules",
    "tests",
    "docs",
    "bench",
    "compose",
)


class ImageBuildError(Exception):
    """Building an image failed; the message says which step and why."""


@dataclass(frozen=True, slots=True)
class PluginRecipe:
    """How to build one plugin image."""

    name: str  #: plugin name, e.g. ``pl-dircopy``
    module: str  #: its Python package, e.g. ``pl_dircopy``
    selfexec: str  #: its console script, e.g. ``dircopy``
    tag: str  #: the image reference, e.g. ``chris-fabric/pl-dircopy:1.0.0``
    #: other project packages the plugin imports (part of its fingerprint)
    modules: tuple[str, ...] = ()
    #: distributions besides pydantic that its recipe installs, as wheels pinned
    #: to the host's versions in the shared wheel directory (part of its fingerprint)
    requirements: tuple[str, ...] = ()
    #: large distributions the plugin needs (e.g. torch), installed in the image at
    #: the host's versions from wheels made for this recipe alone (fingerprinted)
    extra: tuple[str, ...] = ()
    #: built when no plugin list is given; heavy images (torch's) only on request,
    #: so the suites that need the light reference images do not wait for them
    by_default: bool = True

    @property
    def dockerfile(self) -> Path:
        """The recipe file, ``plugins/images/<name>.Dockerfile``."""
        return HERE / f"{self.name}.Dockerfile"


#: The plugins this script knows, by plugin name.
PLUGINS: dict[str, PluginRecipe] = {
    r.name: r
    for r in (
        PluginRecipe("pl-dircopy", "pl_dircopy", "dircopy", "chris-fabric/pl-dircopy:1.0.0"),
        PluginRecipe(
            "pl-simpledsapp", "pl_simpledsapp", "simpledsapp", "chris-fabric/pl-simpledsapp:1.0.0"
        ),
        PluginRecipe(
            "pl-topologicalcopy",
            "pl_topologicalcopy",
            "topologicalcopy",
            "chris-fabric/pl-topologicalcopy:1.0.0",
        ),
        PluginRecipe(
            "pl-dcm2nifti",
            "pl_dcm2nifti",
            "dcm2nifti",
            "chris-fabric/pl-dcm2nifti:1.0.0",
            requirements=("numpy", "nibabel", "pydicom"),
        ),
        PluginRecipe(
            "pl-lung-emphysema",
            "pl_lung_emphysema",
            "lungemphysema",
            "chris-fabric/pl-lung-emphysema:1.0.0",
            # it reads DICOM with pl-dcm2nifti's series module
            modules=("pl_dcm2nifti",),
            requirements=("numpy", "scipy", "nibabel", "pillow", "pydicom"),
        ),
        PluginRecipe(
            "pl-infer",
            "pl_infer",
            "infer",
            "chris-fabric/pl-infer:1.0.0",
            extra=("torch", "numpy", "nibabel", "pydicom"),
            by_default=False,
        ),
    )
}


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> None:
    """Run ``cmd`` (a list), raising ``ImageBuildError`` with its output on failure."""
    log.info("%s: %s", what, " ".join(cmd))
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{what}: {cmd[0]} is not installed ({exc})") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _remove_superseded(client: docker.DockerClient, image_id: str, ref: str) -> None:
    """Remove an image that a rebuild of ``ref`` replaced, so rebuilds do not pile up.

    Its untagged parents go with it. An image still used (by a container, or
    as the parent of another image) stays; that is logged, not raised.
    """
    try:
        client.images.remove(image_id)
        log.info("removed the previous %s image %s", ref, image_id[:19])
    except docker.errors.ImageNotFound:
        pass  # already pruned along with its last child
    except docker.errors.DockerException as exc:
        log.info("kept the previous %s image %s: %s", ref, image_id[:19], exc)


def _get_image(client: docker.DockerClient, ref: str) -> Image | None:
    """The local image ``ref``, or ``None`` when absent."""
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"cannot inspect image {ref}: {exc}") from exc


# -- 1. base image ------------------------------------------------------------------------


def ensure_base_image(
    client: docker.DockerClient,
    *,
    rebuild: bool = False,
    mirror: str = DEBIAN_MIRROR,
    work_dir: Path = DEFAULT_WORK_DIR,
) -> str:
    """Make sure ``chris-fabric/python-base:bookworm`` exists; return its image id.

    Builds it (mmdebstrap, then ``docker import``) when absent or when
    ``rebuild``. Needs root (or unprivileged user namespaces) for mmdebstrap
    and a reachable Debian ``mirror``. Raises ``ImageBuildError``.
    """
    existing = _get_image(client, BASE_IMAGE)
    if existing is not None and not rebuild:
        log.info("base image %s exists (%s)", BASE_IMAGE, existing.short_id)
        return str(existing.id)
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="rootfs-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        _run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                # Documentation and man pages are dead weight in a plugin image.
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                DEBIAN_SUITE,
                str(tarball),
                mirror,
            ],
            "mmdebstrap",
        )
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"LABEL org.chris-fabric.base={DEBIAN_SUITE}",
            'CMD ["python3"]',
        ]
        log.info("docker import %s as %s", tarball, BASE_IMAGE)
        try:
            # Streams the tarball from disk to the engine.
            client.api.import_image_from_file(
                str(tarball), repository=BASE_REPOSITORY, tag=BASE_TAG, changes=changes
            )
        except docker.errors.DockerException as exc:
            raise ImageBuildError(f"docker import of {BASE_IMAGE} failed: {exc}") from exc
    image = _get_image(client, BASE_IMAGE)
    if image is None:
        raise ImageBuildError(f"docker import did not create {BASE_IMAGE}")
    return str(image.id)


# -- 2. wheels ------------------------------------------------------------------------------


def build_wheels(work_dir: Path = DEFAULT_WORK_DIR, requirements: Iterable[str] = ()) -> Path:
    """Build the project wheel, the pydantic wheels and those of ``requirements``
    (distribution names, pinned to the host's versions, with their dependencies);
    return the wheel directory.

    The project is built from a copy of the source tree (without caches,
    venvs and tests) so that nothing is written into the working tree.
    Raises ``ImageBuildError`` when the host's Python is not 3.11 or pip fails
    (also when a requirement is not installed on the host).
    """
    if sys.version_info[:2] != IMAGE_PYTHON:
        raise ImageBuildError(
            f"wheels must be built by Python {IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]} (the image's "
            f"python3); this is {sys.version_info[0]}.{sys.version_info[1]}"
        )
    wheel_dir = work_dir / "wheels"
    source = work_dir / "source"
    for stale in (wheel_dir, source):
        if stale.exists():
            shutil.rmtree(stale)
    wheel_dir.mkdir(parents=True)
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*_SOURCE_IGNORE))
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheel_dir)]
    _run([*pip, "--no-deps", str(source)], "pip wheel (project)")
    # Pinned to the host's pydantic: the version the project is tested with.
    _run([*pip, f"pydantic=={dist_version('pydantic')}"], "pip wheel (pydantic)")
    if pinned := _pinned(requirements):
        # The versions the project is tested with; binary wheels for the image's 3.11.
        _run([*pip, *pinned], "pip wheel (plugin requirements)")
    shutil.rmtree(source)
    return wheel_dir


def _pinned(requirements: Iterable[str]) -> list[str]:
    """``name==<host version>`` for each distribution (sorted, deduplicated).

    Raises ``ImageBuildError`` for one not installed on the host.
    """
    pinned = []
    for name in sorted(set(requirements)):
        try:
            pinned.append(f"{name}=={dist_version(name)}")
        except PackageNotFoundError as exc:
            raise ImageBuildError(
                f"{name} is not installed on the host (the image installs the host's version); "
                "install the project"
            ) from exc
    return pinned


def build_extra_wheels(recipe: PluginRecipe, work_dir: Path = DEFAULT_WORK_DIR) -> Path | None:
    """Wheels of ``recipe.extra`` and their dependencies, pinned to the host's versions.

    They go to a directory of their own (``wheels-<plugin>/``), so that a
    large one (torch, ~200 MB) is copied only into the build context of the
    plugin that needs it. pip takes them from its configured sources (for
    torch, the file the host's own install came from). Returns ``None`` when
    the recipe has no extras. Raises ``ImageBuildError``.
    """
    if not recipe.extra:
        return None
    pins = _pinned(recipe.extra)
    wheel_dir = work_dir / f"wheels-{recipe.name}"
    if wheel_dir.exists():
        shutil.rmtree(wheel_dir)
    wheel_dir.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheel_dir)]
    _run([*pip, *pins], f"pip wheel ({recipe.name} extras)")
    return wheel_dir


def _package_files(package: Path) -> list[Path]:
    """The source files of a package directory (no caches), sorted."""
    return sorted(
        p
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def fingerprint(recipe: PluginRecipe, base_id: str) -> str:
    """The build fingerprint of ``recipe``'s image (sha256 hex).

    Covers what goes into the image and matters to the plugin: the base image
    id, the recipe, ``pyproject.toml`` (metadata, entry points), the host's
    versions of pydantic, of the recipe's requirements and of its ``extra``
    distributions (the ones the wheels pin), and the source files (data files
    included) of ``chris_sdk``, of the plugin's package and of the other
    packages it imports. Computed from the sources, so
    an up-to-date image is recognised without building any wheel.
    """
    digest = hashlib.sha256()
    digest.update(f"base:{base_id}\npydantic:{dist_version('pydantic')}\n".encode())
    for pin in _pinned(recipe.requirements):
        digest.update(f"{pin}\n".encode())
    if recipe.extra:
        digest.update(f"extra:{','.join(_pinned(recipe.extra))}\n".encode())
    plugins_dir = REPO_ROOT / "plugins"
    files = [
        recipe.dockerfile,
        REPO_ROOT / "pyproject.toml",
        *_package_files(plugins_dir / "chris_sdk"),
        *_package_files(plugins_dir / recipe.module),
        *(f for module in recipe.modules for f in _package_files(plugins_dir / module)),
    ]
    for path in files:
        with path.open("rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        digest.update(f"{path.relative_to(REPO_ROOT).as_posix()}:{content}\n".encode())
    return digest.hexdigest()


# -- 3. plugin images -----------------------------------------------------------------------


def _docker_build(client: docker.DockerClient, what: str, **kwargs: Any) -> Image:
    """``client.images.build`` with errors translated to ``ImageBuildError``."""
    try:
        image, _logs = client.images.build(rm=True, forcerm=True, pull=False, **kwargs)
    except docker.errors.BuildError as exc:
        lines = [str(entry.get("stream") or entry.get("error") or "") for entry in exc.build_log]
        tail = "".join(lines)[-4000:]
        raise ImageBuildError(f"{what} failed: {exc.msg}\n{tail}") from exc
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"{what} failed: {exc}") from exc
    return image


def _descriptor_in_image(client: docker.DockerClient, image: Image, recipe: PluginRecipe) -> str:
    """Run ``<selfexec> --json`` in ``image`` and return the validated descriptor JSON."""
    try:
        output = client.containers.run(
            image.id, [recipe.selfexec, "--json"], remove=True, network_disabled=True
        )
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"{recipe.selfexec} --json failed in the image: {exc}") from exc
    text = output.decode() if isinstance(output, bytes) else str(output)
    try:
        descriptor = PluginDescriptor.parse(text)
    except DescriptorError as exc:
        raise ImageBuildError(f"{recipe.name}: bad descriptor from the image: {exc}") from exc
    expected = {"name": recipe.name, "selfexec": recipe.selfexec, "dock_image": recipe.tag}
    actual = {key: getattr(descriptor, key) for key in expected}
    if actual != expected:
        raise ImageBuildError(f"{recipe.name}: descriptor says {actual}, expected {expected}")
    # Compact, key order kept: exactly the object --json printed.
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)


def is_up_to_date(client: docker.DockerClient, recipe: PluginRecipe, print_: str) -> bool:
    """Whether ``recipe``'s image exists with fingerprint ``print_`` and a descriptor label."""
    existing = _get_image(client, recipe.tag)
    if existing is None:
        return False
    labels = existing.labels or {}
    return labels.get(FINGERPRINT_LABEL) == print_ and bool(labels.get(DESCRIPTOR_LABEL))


def build_plugin_image(
    client: docker.DockerClient,
    recipe: PluginRecipe,
    wheel_dir: Path,
    print_: str,
    *,
    work_dir: Path = DEFAULT_WORK_DIR,
) -> str:
    """Build ``recipe``'s image from the wheels in ``wheel_dir``; return its tag.

    ``print_`` (see :func:`fingerprint`) goes into the fingerprint label.
    Raises ``ImageBuildError``.
    """
    previous = _get_image(client, recipe.tag)
    context = work_dir / "context" / recipe.name
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    shutil.copyfile(recipe.dockerfile, context / "Dockerfile")
    shutil.copytree(wheel_dir, context / "wheels")
    extra_dir = build_extra_wheels(recipe, work_dir)
    if extra_dir is not None:
        shutil.copytree(extra_dir, context / "wheels", dirs_exist_ok=True)
        shutil.rmtree(extra_dir)
    log.info("building %s", recipe.tag)
    # Stage 1: the recipe. No fingerprint label yet, so a failure in stage 2
    # never leaves an image that looks up to date.
    stage1 = _docker_build(
        client,
        f"docker build of {recipe.tag}",
        path=str(context),
        tag=recipe.tag,
        buildargs={"BASE": BASE_IMAGE},
        network_mode="none",
    )
    descriptor = _descriptor_in_image(client, stage1, recipe)
    # Stage 2: the descriptor valid inside the image, as a label.
    final = _docker_build(
        client,
        f"labelling {recipe.tag}",
        fileobj=io.BytesIO(f"FROM {recipe.tag}\n".encode()),
        tag=recipe.tag,
        labels={DESCRIPTOR_LABEL: descriptor, FINGERPRINT_LABEL: print_},
    )
    shutil.rmtree(context)
    if previous is not None and previous.id != final.id:
        _remove_superseded(client, str(previous.id), recipe.tag)
    return recipe.tag


@contextlib.contextmanager
def _locked(work_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``work_dir`` (two builds must not share the scratch space)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with (work_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_images(
    client: docker.DockerClient | None = None,
    *,
    plugins: Iterable[str] | None = None,
    base_only: bool = False,
    rebuild: bool = False,
    mirror: str = DEBIAN_MIRROR,
    work_dir: Path = DEFAULT_WORK_DIR,
) -> dict[str, str]:
    """Build whatever is missing or stale; return plugin name → image tag.

    ``plugins`` names the plugins (names of :data:`PLUGINS`; default: those
    ``by_default``, which leaves out the heavy pl-infer);
    ``base_only`` stops after the base image (returning ``{}``). ``client``
    defaults to ``docker.from_env()`` (closed afterwards). Raises
    ``ImageBuildError`` (also for an unknown plugin name).
    """
    names = [n for n, r in PLUGINS.items() if r.by_default] if plugins is None else list(plugins)
    if unknown := [n for n in names if n not in PLUGINS]:
        raise ImageBuildError(f"unknown plugin(s) {unknown}; known: {sorted(PLUGINS)}")
    owned = client is None
    if client is None:
        try:
            client = docker.from_env(timeout=600)
        except docker.errors.DockerException as exc:
            raise ImageBuildError(f"no Docker engine: {exc}") from exc
    try:
        with _locked(work_dir):
            old_base = _get_image(client, BASE_IMAGE)
            base_id = ensure_base_image(client, rebuild=rebuild, mirror=mirror, work_dir=work_dir)
            if base_only:
                return {}
            prints = {name: fingerprint(PLUGINS[name], base_id) for name in names}
            stale = [
                name
                for name in names
                if rebuild or not is_up_to_date(client, PLUGINS[name], prints[name])
            ]
            for name in sorted(set(names) - set(stale)):
                log.info("%s is up to date", PLUGINS[name].tag)
            if stale:
                wheel_dir = build_wheels(
                    work_dir, [r for name in stale for r in PLUGINS[name].requirements]
                )
                for name in stale:
                    build_plugin_image(
                        client, PLUGINS[name], wheel_dir, prints[name], work_dir=work_dir
                    )
            if old_base is not None and old_base.id != base_id:
                # Only now, when the plugin images built on it may be gone.
                _remove_superseded(client, str(old_base.id), BASE_IMAGE)
            return {name: PLUGINS[name].tag for name in names}
    finally:
        if owned:
            client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the images, print ``name<TAB>tag`` per plugin; exit 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--base-only", action="store_true", help="build only the base image")
    parser.add_argument(
        "--plugins",
        default=",".join(n for n, r in PLUGINS.items() if r.by_default),
        help=f"comma-separated plugin names among {', '.join(PLUGINS)} (default: %(default)s)",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild even what exists")
    parser.add_argument("--mirror", default=DEBIAN_MIRROR, help="Debian mirror for mmdebstrap")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        built = ensure_images(
            plugins=[p for p in args.plugins.split(",") if p],
            base_only=args.base_only,
            rebuild=args.rebuild,
            mirror=args.mirror,
        )
    except ImageBuildError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    for name, tag in built.items():
        sys.stdout.write(f"{name}\t{tag}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
