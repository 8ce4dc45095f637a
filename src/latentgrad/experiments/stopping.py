"""How runs and sweeps stop on SIGTERM (a scheduler's pre-emption, ``kill``, a cluster's job end).

A run receiving SIGTERM is stopped by Lightning at the end of the current batch; ``latentgrad run``
then exits with ``STOPPED_EXIT_CODE`` (Lightning's own exception is a ``SystemExit`` without a
code, which would exit with status 0, as if the run had finished). The batch it stopped at is
checkpointed (``resumable.EpochSafeCheckpoint``; a SIGTERM in an epoch's last batch or in its
validation stops the run after that validation, with the epoch saved), and ``--resume``
continues it exactly. A sweep
receiving SIGTERM passes it on to the runs it started, starts no further cell and exits with the
same status.
"""

from __future__ import annotations

import signal

STOPPED_EXIT_CODE = 128 + signal.SIGTERM  # the shell's status of a process that SIGTERM ended


class RunStopped(Exception):
    """The run received SIGTERM before it finished; nothing of its unfinished step was written
    and its last checkpoint stays for ``--resume``."""
