"""The words every backend uses for jobs: labels, mount points, messages.

Plain constants with no imports, so that each backend (and the local
backend's runner process) uses them without pulling in another backend's
library.
"""

from __future__ import annotations

from typing import Final

#: Label (docker, swarm) or annotation (kubernetes) holding a job's id.
LABEL_JID: Final = "org.chrisproject.jid"
#: Label marking what pman runs, by which a restarted pman finds its jobs.
LABEL_MANAGED_BY: Final = "org.chrisproject.managed-by"
MANAGED_BY: Final = "pman"

#: Where container backends mount a job's input and output dirs.
INCOMING: Final = "/share/incoming"
OUTGOING: Final = "/share/outgoing"

#: A job's message when the kernel killed it for memory.
OOM_MESSAGE: Final = "out of memory (OOMKilled)"
#: A job's message when it was killed for running longer than ``max_run_seconds``.
MAX_RUN_MESSAGE: Final = "exceeded max run time"
