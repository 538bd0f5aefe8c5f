"""A delivered credential: an owned memfd descriptor, mapped only inside a ``with`` block."""

from __future__ import annotations

import contextlib
import os
from types import TracebackType

from ._memory import NON_DUMPABLE, SecretMapping


class Credential:
    """One credential delivered as a file descriptor, usable once.

    ``with cred as buf:`` maps the memfd and yields a read-only :class:`memoryview` of
    exactly :attr:`length` bytes. Leaving the block zeroes the whole mapping, releases the
    view, unmaps it, closes the descriptor and restores the process's dumpability. A
    credential that is never entered still has its descriptor closed by :meth:`close` (or
    when it is garbage-collected).

    Attributes: :attr:`service`, :attr:`length`, :attr:`kind` (``"memfd_secret"`` or
    ``"sealed_memfd"``) and :attr:`mode` (``"fd"`` from the daemon's socket,
    ``"inherited"`` from ``agentkeys run --fd``).
    """

    def __init__(self, fd: int, *, service: str, length: int, kind: str, mode: str) -> None:
        """Takes ownership of ``fd``."""
        self._fd: int | None = fd
        self._mapping: SecretMapping | None = None
        self._used = False
        self.service = service
        self.length = length
        self.kind = kind
        self.mode = mode

    def __repr__(self) -> str:
        state = "mapped" if self._mapping else "closed" if self._fd is None else "ready"
        return (
            f"Credential(service={self.service!r}, length={self.length}, "
            f"kind={self.kind!r}, mode={self.mode!r}, {state})"
        )

    def __enter__(self) -> memoryview:
        if self._used or self._fd is None:
            raise RuntimeError(f"the credential for {self.service!r} was already used or closed")
        self._used = True
        # Non-dumpable before the bytes become reachable, so no core dump can catch them.
        NON_DUMPABLE.acquire()
        try:
            self._mapping = SecretMapping(self._fd, self.length)
        except BaseException:
            NON_DUMPABLE.release()
            self.close()
            raise
        return self._mapping.view

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Wipes and unmaps the credential (if mapped) and closes its descriptor.

        Raises :class:`BufferError`, after wiping, if a reference to the buffer outlives
        the block.
        """
        mapping, self._mapping = self._mapping, None
        fd, self._fd = self._fd, None
        try:
            if mapping is not None:
                mapping.close()
        finally:
            if fd is not None:
                os.close(fd)
            if mapping is not None:
                NON_DUMPABLE.release()

    def __del__(self) -> None:
        # A credential dropped unused (or without leaving its block) must not leak its
        # descriptor or its bytes. getattr: __init__ may have failed before setting _fd.
        if getattr(self, "_fd", None) is not None:
            # A BufferError here still means "wiped"; a finalizer has no caller to tell.
            with contextlib.suppress(BufferError):
                self.close()
