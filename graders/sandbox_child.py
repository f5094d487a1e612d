"""The inside of the python grader sandbox (run by `graders.sandbox`, never imported by the service).

Runs as `python -I -B sandbox_child.py` under `unshare --user --map-root-user --net --mount --pid --ipc --uts
--fork --kill-child`, so it starts as root of a fresh user namespace with its own (empty) network, mounts,
process ids, IPC and host name. Standard library only. Before any user code runs it:

1. builds a new root on a tmpfs holding only read-only bind mounts of the interpreter's own library folders
   (stdlib, site-packages), the system's shared libraries, /dev/null, /dev/zero, /dev/urandom and a small
   writable /tmp, then pivots into it and detaches the old root: the service's files, data folder, sockets and
   /proc are not there to open;
2. sets resource limits (address space, CPU seconds, file size, open files, no core dumps; not RLIMIT_NPROC,
   which counts threads too and does not bind root: the filter below is what stops new processes);
3. sets no_new_privs and installs a seccomp filter that refuses new processes (fork, vfork, clone without
   CLONE_THREAD, clone3, execve), sockets, ptrace, mounts, namespaces, bpf, keyrings, perf, userfaultfd and
   io_uring, then drops every capability.

Protocol: one JSON object on stdin ({"source", "calls": [{"sample", "item"}], "max_output_bytes", ...}); one
JSON line on the result channel (the original stdout) once the sandbox is up, {"ready": true}, then one per
call: {"reward": float} or {"error": "runtime", "details": str}. User code's own stdout/stderr go to /dev/null.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import struct
import sys
import traceback

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAPBSET_DROP = 38, 22, 24
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000

#: Per architecture: (audit arch, syscall numbers of pivot_root, capset, denied syscalls)
_ARCH = {
    "x86_64": (0xC000003E, 155, 126, {
        "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "socket": 41, "socketpair": 53, "ptrace": 101,
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "bpf": 321,
        "keyctl": 250, "add_key": 248, "request_key": 249, "perf_event_open": 298, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 246,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "process_vm_readv": 310,
        "process_vm_writev": 311, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "mount_setattr": 442}, 56),
    "aarch64": (0xC00000B7, 41, 91, {
        "execve": 221, "execveat": 281, "socket": 198, "socketpair": 199, "ptrace": 117, "unshare": 97,
        "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "bpf": 280, "keyctl": 219,
        "add_key": 217, "request_key": 218, "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 104, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "process_vm_readv": 270, "process_vm_writev": 271,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442}, 220),
}
_CLONE3 = 435


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags,
                       data and data.encode()), f"mount {target}")


def _bind_read_only(path: str, root: str, *, devices: bool = False) -> None:
    target = root + path
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(path, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | (0 if devices else MS_NODEV))


def _new_root(root: str, library_paths: list[str], tmp_bytes: int) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in library_paths:
        if os.path.exists(path):
            _bind_read_only(path, root)
    for device in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
        _bind_read_only(device, root, devices=True)
    os.makedirs(root + "/tmp")
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={tmp_bytes},mode=1777")
    os.makedirs(root + "/.old")
    _check(_libc.syscall(_ARCH[os.uname().machine][1], (root).encode(), (root + "/.old").encode()), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "umount old root")
    os.rmdir("/.old")
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _seccomp() -> None:
    arch, _, capset, denied, clone = _ARCH[os.uname().machine]

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    deny = SECCOMP_RET_ERRNO | EPERM
    program = [op(ld_abs, 0, 0, 4), op(jeq, 1, 0, arch), op(ret, 0, 0, SECCOMP_RET_KILL_PROCESS),
               op(ld_abs, 0, 0, 0), op(jge, 0, 1, 0x40000000), op(ret, 0, 0, SECCOMP_RET_KILL_PROCESS)]
    for number in sorted(set(denied.values())):
        program += [op(jeq, 0, 1, number), op(ret, 0, 0, deny)]
    # clone3's flags sit behind a pointer a filter cannot read: ENOSYS makes libc fall back to clone.
    program += [op(jeq, 0, 1, _CLONE3), op(ret, 0, 0, SECCOMP_RET_ERRNO | ENOSYS)]
    # clone: threads (CLONE_THREAD) only; args[0] (the flags) starts at offset 16 of seccomp_data.
    program += [op(jeq, 0, 4, clone), op(ld_abs, 0, 0, 16), op(jset, 1, 0, CLONE_THREAD), op(ret, 0, 0, deny),
                op(ret, 0, 0, SECCOMP_RET_ALLOW), op(ret, 0, 0, SECCOMP_RET_ALLOW)]
    code = b"".join(program)
    buffer = ctypes.create_string_buffer(code, len(code))

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Program(len(program), ctypes.addressof(buffer))
    for cap in range(64):  # the bounding set, then the thread's own capabilities (capset with all zeros)
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = struct.pack("II", 0x20080522, 0)
    data = ctypes.create_string_buffer(24)
    _check(_libc.syscall(capset, ctypes.c_char_p(header), data), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")


def _reward(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"grade() must return a number, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"grade() returned {value}, not a finite number")
    return value


def _user_traceback() -> str:
    """The current exception with the user's own frames only (not this file's)."""
    kind, error, trace = sys.exc_info()
    frames = [frame for frame in traceback.extract_tb(trace) if frame.filename == "grader.py"]
    text = "".join(traceback.format_list(frames[-5:]) + traceback.format_exception_only(kind, error))
    return text[-2000:]


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    _new_root(request["root"], request["library_paths"], request["tmp_bytes"])
    _limits(request["memory_bytes"], request["cpu_seconds"], request["tmp_bytes"])
    _seccomp()
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    limit = int(request["max_output_bytes"])

    def send(message: dict) -> None:
        line = json.dumps(message)
        if len(line) > limit:
            line = json.dumps({"error": "runtime", "details": message.get("details", "")[: limit // 2]
                               or "the grader's result is too large"})
        channel.write(line + "\n")

    send({"ready": True})
    namespace = {"__name__": "grader"}
    try:
        exec(compile(request["source"], "grader.py", "exec"), namespace)  # noqa: S102 - this process's purpose
        grade = namespace.get("grade")
        if not callable(grade):
            raise TypeError("the source defines no function grade(sample, item)")
    except BaseException:  # noqa: BLE001 - anything the user's module does is reported as its error
        details = _user_traceback()
        for _ in request["calls"]:
            send({"error": "runtime", "details": details})
        return
    for call in request["calls"]:
        try:
            send({"reward": _reward(grade(call["sample"], call["item"]))})
        except BaseException:  # noqa: BLE001
            send({"error": "runtime", "details": _user_traceback()})


if __name__ == "__main__":
    main()
