"""pman: the process manager that runs ChRIS plugin jobs on a compute backend.

Other services import only :mod:`pman.schema`, :mod:`pman.client` and :mod:`pman.errors`.
"""
