"""Plugin images for end-to-end tests, built locally by ``plugins/images/build.py``.

No image can be pulled from a registry, so the build script makes them (a
``mmdebstrap`` base, ``docker import``, then one classic ``docker build`` per
plugin). It is loaded from its path because ``plugins/images`` is not a package.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import docker

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "plugins" / "images" / "build.py"


@cache
def build_module() -> ModuleType:
    """The ``plugins/images/build.py`` module (loaded once)."""
    spec = importlib.util.spec_from_file_location("chris_fabric_image_build", BUILD_SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {BUILD_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    # Registered before exec so dataclasses can resolve the module's annotations.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def ensure_plugin_images(client: docker.DockerClient | None = None) -> dict[str, str]:
    """Build the reference plugin images if missing or stale; return plugin name → image tag.

    E.g. ``{"pl-dircopy": "chris-fabric/pl-dircopy:1.0.0", "pl-simpledsapp": ...}``.
    The first build takes about a minute (Debian bootstrap); later calls reuse
    the images unless the plugin code changed. Raises the build module's
    ``ImageBuildError``.
    """
    result: dict[str, str] = build_module().ensure_images(client)
    return result
