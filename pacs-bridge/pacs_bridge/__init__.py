"""PACS bridge: DICOM from hospital PACS into ChRIS, and results back out.

A C-STORE receiver that files instances under CUBE's storage and registers
each complete series in one bulk call (:mod:`pacs_bridge.receiver`,
:mod:`pacs_bridge.registrar`), PS3.15 de-identification per route
(:mod:`pacs_bridge.deid`), query/retrieve and export against PACS services
(:mod:`pacs_bridge.scu`), and a REST API (:mod:`pacs_bridge.api`).
See docs/pacs-bridge.md.
"""

__version__ = "0.1.0"
