"""A plugin's descriptor read from its image in a container registry.

An image built for ChRIS carries its descriptor as JSON in the label
``org.chrisproject.descriptor``; with it, an image reference alone is enough
to register the plugin. The descriptor's ``dock_image`` is replaced by the
reference the image was read from, so compute sites pull exactly that.
"""

from __future__ import annotations

import json

from cube.errors import NotAPluginImage
from cube.registry import DESCRIPTOR_LABEL, ImageRef, RegistryClient


async def descriptor_from_image(registry: RegistryClient, image: str) -> dict[str, object]:
    """The plugin descriptor in ``image``'s label, with ``dock_image`` set to ``image``.

    The descriptor itself is validated by the caller (as an uploaded one is).

    Raises:
        InvalidImageReference: ``image`` is not an image reference.
        NotAPluginImage: the image has no descriptor label, or it is not a JSON object.
        ImageNotFound, RegistryUnauthorized, RegistryUnreachable, RegistryError:
            as :meth:`RegistryClient.image_labels`.
    """
    ref = ImageRef.parse(image)
    labels = await registry.image_labels(ref)
    raw = labels.get(DESCRIPTOR_LABEL)
    if raw is None:
        raise NotAPluginImage(
            f"image {image} is not a ChRIS plugin image: it has no {DESCRIPTOR_LABEL} label"
        )
    try:
        descriptor = json.loads(raw)
    except ValueError as exc:
        raise NotAPluginImage(
            f"the {DESCRIPTOR_LABEL} label of {image} is not JSON: {exc}"
        ) from exc
    if not isinstance(descriptor, dict):
        raise NotAPluginImage(f"the {DESCRIPTOR_LABEL} label of {image} is not a JSON object")
    # compute sites pull what the admin named, not the tag the image was built as
    descriptor["dock_image"] = image
    return descriptor
