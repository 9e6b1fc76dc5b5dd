"""Tests of the plugin SDK, the reference plugins and their images."""
