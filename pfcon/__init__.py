"""pfcon: the coordinator of a ChRIS compute site (pfcon v5 ``/api/v1/jobs/`` API).

CUBE talks to it through :mod:`pfcon.client` and :mod:`pfcon.schema`; see
:mod:`pfcon.app` for the server and ``docs/architecture.md`` for its place.
"""
