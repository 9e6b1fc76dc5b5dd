"""pfioh: a compute site's file I/O handler (zip in to ``incoming/``, zip out of ``outgoing/``).

Other services import only :mod:`pfioh.schema`, :mod:`pfioh.client`,
:mod:`pfioh.errors` and :mod:`pfioh.archive`.
"""
