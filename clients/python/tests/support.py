"""Helpers for the tests: proving a descriptor was closed, and scanning a process's memory."""

from __future__ import annotations

import os
from collections.abc import Iterator


class PipeProbe:
    """A pipe whose read end is sent away. Once every copy of the read end is closed,
    writing to the pipe fails with EPIPE: that proves the receiver closed the descriptor
    it got, whatever number it had."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()

    def drop_own_copy(self) -> None:
        """Closes this side's read end, after sending it."""
        os.close(self.read_end)

    def reader_is_closed(self) -> bool:
        """Whether no process holds the read end any more."""
        try:
            os.write(self.write_end, b"x")
        except BrokenPipeError:
            return True
        return False

    def close(self) -> None:
        os.close(self.write_end)


def open_fd_count() -> int:
    """How many descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def open_memfds() -> int:
    """How many memfd descriptors (``memfd_secret`` or plain memfd) this process has open.

    Counting only these keeps the fake daemon's sockets, which its thread closes in its
    own time, out of the tests' descriptor accounting.
    """
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir itself used, now closed
        count += target.startswith(("/secretmem", "/memfd:"))
    return count


def is_open(fd: int) -> bool:
    """Whether ``fd`` is an open descriptor of this process."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def memory_contains(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` appears in any readable memory of process ``pid``.

    Regions the kernel refuses (``memfd_secret`` pages answer EIO) are skipped: refusing
    readers is what they are for.
    """
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end in _readable_regions(pid):
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except OSError:
                continue
            if chunk and needle in chunk:
                return True
    return False


def _readable_regions(pid: int) -> Iterator[tuple[int, int]]:
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if fields[1].startswith("r"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                yield start, end
