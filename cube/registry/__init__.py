"""Container registries: image references and a client of the OCI distribution API.

CUBE reads a plugin's descriptor from the label :data:`DESCRIPTOR_LABEL` of
its image in a registry, so an image reference alone registers a plugin.
"""

from cube.registry.client import RegistryClient, parse_challenge
from cube.registry.reference import ImageName, ImageRef, is_loopback, split_reference
from cube.registry.schema import RegistryCredentials

#: The image label holding a plugin's descriptor JSON (as ``chris_plugin`` images carry it).
DESCRIPTOR_LABEL = "org.chrisproject.descriptor"

__all__ = [
    "DESCRIPTOR_LABEL",
    "ImageName",
    "ImageRef",
    "RegistryClient",
    "RegistryCredentials",
    "is_loopback",
    "parse_challenge",
    "split_reference",
]
