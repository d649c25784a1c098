"""What a process replica may touch, enforced by the kernel (docs/secrets.md, "Replicas").

A replica runs a model someone else wrote. It may read the system, Python and
Berth's replica code, read its own model folder, write its own scratch folder,
and use the GPU devices it was given. Nothing else of the host's files: not
Berth's data directory (database, secret-store key, tokens, logs), not other
models, not another process's ``/proc`` entries.

Two layers, applied in the forked replica before the model's code runs:

- **Landlock** (Linux ≥ 5.13, unprivileged): a file-system ruleset that allows
  only the paths above. From ABI 6 it also scopes signals and abstract unix
  sockets to the replica's own domain, so a replica cannot signal the agent or
  another replica; Landlock always denies ptrace of a process outside the domain.
- **No root powers** when the agent runs as root: the replica keeps uid 0 but
  drops every capability, for good (bounding set, ambient set, and securebits
  locked so that no exec gives them back). It is then a file owner, nothing
  more, and Landlock decides what it may open. With ``BERTH_REPLICA_UID_BASE``
  set, each replica runs as a uid of its own instead (base + its slot, no
  groups): permissions then close the data directory too, as a second layer,
  but Python and Berth must be readable by other users (not so for a Python
  installed under ``/root``).

``no_new_privs`` is set in both cases: no set-uid program gives anything back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Policy", "SandboxError", "apply", "landlock_abi", "read_paths_for"]

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # every Linux arch
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Landlock's file-system rights, by the ABI that brought them.
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1_ALL = (1 << 13) - 1  # execute … make_sym
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_ONLY = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1

_READ = _EXECUTE | _READ_FILE | _READ_DIR

# Read-only for every replica when present: the system and its libraries.
SYSTEM_PATHS = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/sys")
# Device files every program expects; GPU devices are added when present.
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
GPU_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/dri/*")
# What a replica may read of /proc besides its own entry.
PROC_FILES = ("/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/loadavg", "/proc/uptime")


class SandboxError(RuntimeError):
    """A replica's sandbox could not be set up as its policy asks."""


@dataclass(frozen=True, slots=True)
class Policy:
    """One replica's sandbox; crosses to the zygote as JSON."""

    read: tuple[str, ...]
    write: tuple[str, ...]
    # Paths that may be listed but not read (a parent on Python's import path).
    list_only: tuple[str, ...] = ()
    devices: tuple[str, ...] = DEVICES
    uid: int | None = None  # drop to this uid and gid (the agent runs as root)
    landlock: bool = True  # False: the operator turned it off (BERTH_SANDBOX=off)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        return cls(
            read=tuple(data["read"]),
            write=tuple(data["write"]),
            list_only=tuple(data.get("list_only", ())),
            devices=tuple(data.get("devices", DEVICES)),
            uid=data.get("uid"),
            landlock=bool(data.get("landlock", True)),
        )


def _syscall() -> Any:
    return ctypes.CDLL(None, use_errno=True).syscall


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unavailable."""
    if not sys.platform.startswith("linux"):
        return 0
    syscall = _syscall()
    syscall.restype = ctypes.c_long
    abi = syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(0, int(abi))


def read_paths_for(berth_root: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What every replica reads (the system, Python, Berth's replica packages) and the
    folders it may only list (Berth's root, so imports find its packages)."""
    read = {p for p in SYSTEM_PATHS if os.path.exists(p)}
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        read.add(os.path.realpath(prefix))
    read.add(os.path.dirname(os.path.realpath(sys.executable)))
    for package in ("workers", "shared"):
        read.add(str(berth_root / package))
    return tuple(sorted(read)), (str(berth_root),)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _handled(abi: int) -> int:
    rights = _ABI1_ALL
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def _landlock(policy: Policy, abi: int) -> None:
    syscall = _syscall()
    syscall.restype = ctypes.c_long
    handled = _handled(abi)
    attr = _RulesetAttr(handled, 0, (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise SandboxError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    own_proc = f"/proc/{os.getpid()}"
    grants: list[tuple[str, int]] = [(p, _READ) for p in (*policy.read, *PROC_FILES, own_proc)]
    grants += [(p, _READ_DIR) for p in policy.list_only]
    grants += [(p, handled) for p in policy.write]
    grants += [(p, _READ_FILE | _WRITE_FILE | _IOCTL_DEV | _TRUNCATE) for p in policy.devices]
    for pattern in GPU_DEVICE_GLOBS:
        grants += [(p, _READ_FILE | _WRITE_FILE | _IOCTL_DEV) for p in glob.glob(pattern)]
    try:
        for path, rights in grants:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except (FileNotFoundError, PermissionError):
                continue  # nothing there, or nothing this process could reach anyway
            try:
                allowed = rights & handled
                if not os.path.isdir(path):
                    allowed &= _FILE_ONLY
                rule = _PathBeneath(allowed, fd)
                if syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) < 0:
                    raise SandboxError(
                        f"landlock_add_rule({path}): {os.strerror(ctypes.get_errno())}"
                    )
            finally:
                os.close(fd)
        if syscall(_SYS_RESTRICT_SELF, ruleset, 0) < 0:
            raise SandboxError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SandboxError(f"could not drop to uid {uid}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_PR_CAPBSET_DROP, _PR_SET_SECUREBITS, _PR_CAP_AMBIENT, _AMBIENT_CLEAR_ALL = 24, 28, 47, 4
# noroot, no_setuid_fixup, no_cap_ambient_raise, each locked, and keep_caps locked off:
# uid 0 gains no capability back, by exec or otherwise.
_SECUREBITS = 0b1110_1111
_CAP_VERSION_3 = 0x20080522


def _drop_capabilities() -> None:
    """uid 0 with no capability at all: no root powers, only a file owner's rights."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except OSError:
        last = 63
    if libc.prctl(_PR_SET_SECUREBITS, _SECUREBITS, 0, 0, 0) != 0:
        raise SandboxError(f"PR_SET_SECUREBITS: {os.strerror(ctypes.get_errno())}")
    for cap in range(last + 1):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise SandboxError(f"PR_CAPBSET_DROP({cap}): {os.strerror(ctypes.get_errno())}")
    libc.prctl(_PR_CAP_AMBIENT, _AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise SandboxError(f"capset: {os.strerror(ctypes.get_errno())}")


def apply(policy: Policy) -> None:
    """Sandbox the calling process (a freshly forked replica) for good."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SandboxError(f"PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if policy.uid is not None:
        _drop_to(policy.uid)  # a uid of its own: every capability goes with root's
    elif os.geteuid() == 0:
        _drop_capabilities()
    if policy.landlock:
        abi = landlock_abi()
        if abi == 0:
            raise SandboxError("this kernel has no Landlock (Linux 5.13 or later, LSM enabled)")
        _landlock(policy, abi)
