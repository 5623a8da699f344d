"""Real faults for tests: no mocks where the kernel can produce the failure itself."""

from __future__ import annotations

import ctypes
import os

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def obey_permissions() -> None:
    """A `preexec_fn` for `subprocess`: root writes into any folder (CAP_DAC_OVERRIDE); with that
    capability and CAP_DAC_READ_SEARCH dropped from the bounding set before exec, the command
    still runs as root but is bound by permission bits as any user is, so a 0555 folder is
    read-only to it for real. Does nothing for a user who is not root (Linux only)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
