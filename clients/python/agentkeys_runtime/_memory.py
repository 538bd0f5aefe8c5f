"""Where the credential bytes live on this side: a shared mapping of the delivered memfd,
wiped before it is unmapped, while the process is kept non-dumpable."""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import threading
from typing import Any

from ._errors import AgentkeysError

#: Page kinds the daemon delivers, as named in ``_meta["agentkeys/fd"]["kind"]``.
MEMFD_SECRET = "memfd_secret"
SEALED_MEMFD = "sealed_memfd"

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4


def fd_kind(fd: int) -> str | None:
    """The page kind behind ``fd`` (from the name the kernel gives it), or ``None`` when
    ``fd`` is closed or is not a memfd at all."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if target.startswith("/secretmem"):
        return MEMFD_SECRET
    if target.startswith("/memfd:"):
        return SEALED_MEMFD
    return None


class _DumpableGuard:
    """Keeps the process non-dumpable (no core dumps, no ptrace attach by other
    unprivileged processes) while at least one credential is mapped.

    A counter makes nested and concurrent blocks work: the first one in saves the current
    value and clears it, the last one out restores it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = 1

    def acquire(self) -> None:
        """Makes the process non-dumpable (if it is the first active holder)."""
        with self._lock:
            if self._depth == 0:
                self._saved = _prctl(_PR_GET_DUMPABLE)
                _prctl(_PR_SET_DUMPABLE, 0)
            self._depth += 1

    def release(self) -> None:
        """Restores the saved value when the last holder releases."""
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                _prctl(_PR_SET_DUMPABLE, self._saved)


NON_DUMPABLE = _DumpableGuard()


@functools.cache
def _libc_prctl() -> Any:
    """libc's prctl, loaded on first use so that importing works where it is missing."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    # prctl is variadic; declaring its arguments as unsigned long passes clean 64-bit
    # registers on 64-bit ABIs instead of relying on int promotion.
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    prctl.restype = ctypes.c_int
    return prctl


def _prctl(option: int, value: int = 0) -> int:
    ret = _libc_prctl()(option, value, 0, 0, 0)
    if ret < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")
    return int(ret)


class SecretMapping:
    """A shared, read-write mapping of a whole memfd, exposing its first ``length`` bytes
    as a read-only :class:`memoryview`.

    ``memfd_secret`` files cannot be read(2), only mapped. The mapping is shared, so the
    wipe in :meth:`close` zeroes the file's pages themselves, not a private copy.
    """

    def __init__(self, fd: int, length: int) -> None:
        size = os.fstat(fd).st_size
        if not 0 <= length <= size:
            raise AgentkeysError(f"the credential claims {length} bytes but its memfd holds {size}")
        self._mmap = mmap.mmap(
            fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        # The intermediate views are released at once so that only `view` pins the mapping.
        with memoryview(self._mmap) as whole, whole[:length] as window:
            self.view = window.toreadonly()

    def close(self) -> None:
        """Zeroes the whole mapping, then releases the view and unmaps.

        Raises :class:`BufferError` (after wiping) if the caller still holds a buffer
        derived from the view, since the mapping cannot be unmapped under it.
        """
        self._mmap[:] = bytes(len(self._mmap))
        try:
            self.view.release()
            self._mmap.close()
        except BufferError as exc:
            raise BufferError(
                "the credential was wiped, but a reference to its buffer (a slice, a "
                "memoryview or a ctypes object made from `buf`) outlives the `with` block, "
                "so its memory cannot be unmapped: do not keep references to buf after the block"
            ) from exc
