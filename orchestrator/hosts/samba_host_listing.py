"""Summarise a share's folders on the Samba host itself: the program that
``samba_ssh.LIST_SHARE_SCRIPT`` runs there with the host's python3, not a module the
orchestrator imports.

Why. A re-run wants to know which folders nobody touched since the previous run
(orchestrator.transfer.host_listing). Sending every entry's details over SSH for the
orchestrator to parse costs it a few microseconds of Python per entry and side, on its
busiest moment; each host can summarise its own folders instead, in parallel, and send
one line per folder. Per folder it prints the newest ctime among its entries and a
SHA-256 of their sorted ``folder_entry_line``s (name, kind, size, last-write
time), which the orchestrator computes from its records the same way; only entries whose
ctime is at or after a given threshold are sent one by one (their changes decide what a
re-run dispatches even where SMB shows nothing new).

Runs with Python 3.6 or later and its standard library alone (Samba's own tools need
python3 on the host); it only reads. Standard input: the output of ``testparm -s`` (one
run of it: every Samba tool takes ~20 ms of CPU to start, and importing ``subprocess``
as much again). Arguments: the share, the smb.conf ('' for Samba's own), "scan" or
"clock", the threshold in ns since 1970 ('-' for none), then top-level names to leave
out with everything under them (compared without regard to case).

Output: the share's folder, its VFS modules (``share_settings``) and its filesystem type
(``filesystem_type``), one line each, then for a scan, each record ending in NUL (names
may hold any other byte), folders in no order:
``D <newest ctime> <sha256> <odd> <path>`` (path relative to the share, '/'
separators, '' the share itself; odd 1 when a name in the folder holds a backslash or
bytes that are not UTF-8, which SMB would show otherwise), then for each of its entries
changed at or after the threshold ``C <ctime> <name>``. A share Samba does not define
ends the program with status 65; a folder that cannot be read with status 66 (and the
reason on standard error); an entry gone between the folder's listing and its stat
makes its folder odd.

``parse_testparm`` is also the adapter's (orchestrator.hosts.samba_ssh): one definition.
"""

import hashlib
import os
import stat
import sys

FILETIME_1970 = 116444736000000000  # 100-ns intervals from 1601 to 1970


def folder_entry_line(name: bytes, kind: bytes, size: int, last_write: int) -> bytes:
    """What a folder's digest covers of one entry: its name, kind ('d' folder, 'f' regular
    file, 'o' anything else), size (files; 0 otherwise) and last-write time as FILETIME.
    ``folder_digest`` covers a folder's lines."""
    return b"%s/%s %d %d" % (name, kind, size, last_write)


def folder_digest(lines: "list[bytes]") -> str:
    """A folder's digest: SHA-256 (hex) of its entries' ``folder_entry_line``s sorted
    bytewise, joined by NUL (sorts ``lines`` in place). The host computes it from the
    filesystem, the orchestrator from its records: both through this."""
    lines.sort()
    return hashlib.sha256(b"\0".join(lines)).hexdigest()


def _odd(name: bytes) -> bool:
    if b"\\" in name:
        return True
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def parse_testparm(text: str) -> "dict[str, dict[str, str]]":
    """Sections of ``testparm -s`` output: {section: {parameter: value}} in file order."""
    sections = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            continue
        key, _, value = line.partition("=")
        current[key.strip()] = value.strip()
    return sections


def share_settings(sections: "dict[str, dict[str, str]]", share: str) -> "tuple[str, str] | None":
    """(folder, VFS modules) of ``share`` (any case) in ``parse_testparm``'s sections of
    ``testparm -s``, which prints what differs from the defaults: a share's VFS modules
    are [global]'s unless it sets its own; None when no such share has a folder."""
    for name, values in sections.items():
        if name.lower() == share.lower() and name.lower() != "global" and values.get("path"):
            return values["path"], values.get("vfs objects", sections.get("global", {}).get("vfs objects", ""))
    return None


def filesystem_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the filesystem holding ``path`` as Linux names it ("ext4", "xfs",
    "nfs4"...): that of the last mount whose mount point is the longest one holding the
    path's real location; '' where there is no mountinfo (not Linux)."""
    target = os.path.realpath(path)
    longest, kind = -1, ""
    try:
        with open(mountinfo, "rb") as mounts:
            lines = mounts.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        point = fields[4]
        for escaped, character in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            point = point.replace(escaped, character)
        holds = point == "/" or target == point or target.startswith(point + "/")
        if holds and len(point) >= longest:
            longest, kind = len(point), fields[fields.index("-", 6) + 1]
    return kind


def summarise(root: bytes, threshold, prune) -> bytes:
    """The program's output for the tree at ``root`` (see the module's docstring)."""
    out = []
    pending = [b""]
    while pending:
        relative = pending.pop()
        lines, changed = [], []
        newest, odd = 0, False
        with os.scandir(root + b"/" + relative if relative else root) as listing:
            for entry in listing:
                name = entry.name
                if not relative and os.fsdecode(name).lower() in prune:
                    continue
                try:
                    status = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    odd = True
                    continue
                mode, ctime = status.st_mode, status.st_ctime_ns
                if stat.S_ISDIR(mode):
                    kind, size = b"d", 0
                    pending.append(relative + b"/" + name if relative else name)
                elif stat.S_ISREG(mode):
                    kind, size = b"f", status.st_size
                else:
                    kind, size = b"o", 0
                if status.st_mtime_ns < 0:
                    kind = b"o"  # before 1970: never taken as unchanged
                lines.append(folder_entry_line(name, kind, size, status.st_mtime_ns // 100 + FILETIME_1970))
                odd = odd or _odd(name)
                newest = max(newest, ctime)
                if threshold is not None and ctime >= threshold:
                    changed.append(b"C %d %s\0" % (ctime, name))
        out.append(b"D %d %s %d %s\0" % (newest, folder_digest(lines).encode(), odd, relative))
        out.extend(changed)
    return b"".join(out)


def main(argv) -> int:
    """Print the share's settings and, for a scan, summarise its folders; see the module's
    docstring."""
    share, _conf, mode, threshold = argv[:4]
    settings = share_settings(parse_testparm(sys.stdin.buffer.read().decode("utf-8", "surrogateescape")), share)
    if settings is None:
        return 65
    path, modules = settings
    if not os.path.isdir(path):
        return 66
    sys.stdout.buffer.write(("%s\n%s\n%s\n" % (path, modules, filesystem_type(path))).encode("utf-8", "surrogateescape"))
    if mode != "scan":
        return 0
    try:
        os.chdir(path)
        output = summarise(b".", None if threshold == "-" else int(threshold), {name.lower() for name in argv[4:]})
    except OSError as exc:
        where = "." if exc.filename is None else os.fsdecode(exc.filename)
        sys.stderr.write("cannot list %s: %s\n" % (where, exc.strerror))
        return 66
    sys.stdout.buffer.write(output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
