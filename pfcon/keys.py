"""Typed keys of what a pfcon :class:`aiohttp.web.Application` holds."""

from __future__ import annotations

from aiohttp import web

from pfcon.auth import TokenAuthority
from pfcon.coordinator import Coordinator
from pfcon.settings import PfconSettings

SETTINGS_KEY = web.AppKey("settings", PfconSettings)
AUTHORITY_KEY = web.AppKey("authority", TokenAuthority)
COORDINATOR_KEY = web.AppKey("coordinator", Coordinator)
