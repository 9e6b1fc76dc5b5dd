"""Compute backends: the abstract base (:mod:`.base`), the backends side by
side (:mod:`.local`, :mod:`.docker`, :mod:`.swarm`, :mod:`.kubernetes`; the
two Docker-engine ones share :mod:`.engine`), the words they all use
(:mod:`.vocabulary`) and the factory choosing one by name (:mod:`.registry`).

This package module imports nothing, so that the local job runner
(``python -I -S``, importing :mod:`.local_runner` alone) starts quickly.
"""
