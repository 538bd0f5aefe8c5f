"""A same-uid attacker: tries every way to read another process's memory or steal its
descriptors, and prints one JSON object naming the errno each attempt got (or "ok").

usage: attacker.py PID [ADDRESS]
"""

import ctypes
import errno
import json
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
PTRACE_ATTACH = 16
SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
SYS_PROCESS_VM_READV = 310


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def outcome(ret: int) -> str:
    if ret >= 0:
        return "ok"
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def main() -> None:
    pid = int(sys.argv[1])
    address = int(sys.argv[2], 0) if len(sys.argv) > 2 else 0x400000
    result = {}
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    result["ptrace"] = outcome(libc.ptrace(PTRACE_ATTACH, pid, None, None))
    buf = ctypes.create_string_buffer(64)
    local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 64)
    remote = IoVec(ctypes.c_void_p(address), 64)
    result["process_vm_readv"] = outcome(
        libc.syscall(SYS_PROCESS_VM_READV, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    )
    pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        result["pidfd_getfd"] = "pidfd_open " + outcome(pidfd)
    else:
        result["pidfd_getfd"] = outcome(libc.syscall(SYS_PIDFD_GETFD, pidfd, 0, 0))
    try:
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(address)
            mem.read(64)
        result["proc_mem"] = "ok"
    except OSError as e:
        result["proc_mem"] = errno.errorcode.get(e.errno, str(e.errno))
    print(json.dumps(result), flush=True)


main()
