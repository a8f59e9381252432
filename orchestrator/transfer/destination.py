"""What the orchestrator itself does on a destination share: PreExistingData and mirror deletes.

Before a pairing's first transfer of a share, whatever the destination share's root
already holds is moved (renamed, never copied or overwritten) into the ``PreExistingData``
folder at the root. After a later run has copied everything, entries of the destination
that no longer exist on the source are deleted, so the destination mirrors the source.

Both work over SMB with the destination's credentials, one compound request per entry
(common.smb.messages). This module must never touch anything inside ``PreExistingData``,
never delete an entry it was not explicitly given, and never overwrite an existing
entry while moving (a name already taken in PreExistingData gets a numbered suffix).
"""

from __future__ import annotations

from collections.abc import Iterator

from common.smb import messages as m
from common.smb import metadata as md
from common.smb.connection import SmbTree
from common.smb.errors import SmbFileError
from common.smb.walk import DirEntry, ShareWalker

PRE_EXISTING_DATA = "PreExistingData"

STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
_GONE = (STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND)


def is_protected(path: str) -> bool:
    """True for PreExistingData and everything inside it (share-relative path)."""
    top = m.smb_path(path).split("\\", 1)[0]
    return top == PRE_EXISTING_DATA


def list_root(tree: SmbTree) -> Iterator[DirEntry]:
    """The entries directly in the share's root (the walk stops before descending)."""
    for entry in ShareWalker(tree, ""):
        if "\\" in entry.path:
            return
        yield entry


def _rename(tree: SmbTree, path: str, target: str, directory: bool) -> None:
    options = m.FILE_OPEN_REPARSE_POINT | (m.FILE_DIRECTORY_FILE if directory else m.FILE_NON_DIRECTORY_FILE)
    md.compound(tree, path, [
        m.create(path, m.DELETE | m.FILE_READ_ATTRIBUTES | m.SYNCHRONIZE, m.FILE_OPEN, options),
        m.set_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_RENAME_INFORMATION, m.pack_rename(target, False)),
        m.close(m.RELATED_FILE_ID),
    ], f"move into {PRE_EXISTING_DATA}")


def move_into_pre_existing_data(tree: SmbTree) -> list[str]:
    """Move every entry of the share root except PreExistingData into PreExistingData.

    Creates the folder when needed. An entry whose name is already taken inside the
    folder is moved as ``name (2)``, ``name (3)`` ... Returns the names moved (as they
    were in the root). A failure to move one entry raises SmbFileError naming it.
    """
    names = [(entry.name, entry.is_dir) for entry in list_root(tree)
             if entry.name != PRE_EXISTING_DATA]
    if not names:
        return []
    md.compound(tree, PRE_EXISTING_DATA, [
        m.create(PRE_EXISTING_DATA, m.FILE_READ_ATTRIBUTES, m.FILE_OPEN_IF, m.FILE_DIRECTORY_FILE),
        m.close(m.RELATED_FILE_ID),
    ], f"create {PRE_EXISTING_DATA}")
    moved = []
    for name, directory in names:
        suffix = 1
        while True:
            target_name = name if suffix == 1 else f"{name} ({suffix})"
            try:
                _rename(tree, name, f"{PRE_EXISTING_DATA}\\{target_name}", directory)
                break
            except SmbFileError as exc:
                if exc.status != STATUS_OBJECT_NAME_COLLISION:
                    raise
                suffix += 1
        moved.append(name)
    return moved


def delete_file(tree: SmbTree, path: str) -> None:
    """Delete one file even if read-only; a file already gone is fine."""
    if is_protected(path):
        raise ValueError(f"refusing to delete inside {PRE_EXISTING_DATA}: {path!r}")
    try:
        md.compound(tree, path, [
            m.create(path, m.DELETE | m.FILE_WRITE_ATTRIBUTES | m.SYNCHRONIZE, m.FILE_OPEN,
                     m.FILE_NON_DIRECTORY_FILE | m.FILE_OPEN_REPARSE_POINT),
            m.set_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_BASIC_INFORMATION,
                       m.pack_basic(0, 0, 0, 0, m.FILE_ATTRIBUTE_NORMAL)),
            m.set_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_DISPOSITION_INFORMATION,
                       m.pack_delete_on_close()),
            m.close(m.RELATED_FILE_ID),
        ], "delete file")
    except SmbFileError as exc:
        if exc.status not in _GONE:
            raise


def _delete_empty_directory(tree: SmbTree, path: str) -> None:
    try:
        md.compound(tree, path, [
            m.create(path, m.DELETE | m.FILE_WRITE_ATTRIBUTES | m.SYNCHRONIZE, m.FILE_OPEN,
                     m.FILE_DIRECTORY_FILE | m.FILE_OPEN_REPARSE_POINT),
            m.set_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_BASIC_INFORMATION,
                       m.pack_basic(0, 0, 0, 0, m.FILE_ATTRIBUTE_DIRECTORY)),
            m.set_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_DISPOSITION_INFORMATION,
                       m.pack_delete_on_close()),
            m.close(m.RELATED_FILE_ID),
        ], "delete directory")
    except SmbFileError as exc:
        if exc.status not in _GONE:
            raise


def delete_tree(tree: SmbTree, path: str) -> int:
    """Delete a directory and everything in it (files first, then directories deepest
    first); returns how many entries were deleted, the directory included."""
    if is_protected(path) or not m.smb_path(path):
        raise ValueError(f"refusing to delete {path!r}")
    directories = [path]
    deleted = 0
    walker = ShareWalker(tree, path)
    for entry in walker:
        if entry.is_dir and not entry.is_reparse_point:
            directories.append(entry.path)
        else:
            delete_file(tree, entry.path)
            deleted += 1
    if walker.errors:
        first = walker.errors[0]
        raise SmbFileError(first.status, f"cannot list to delete ({first.message})", first.path)
    directories.sort(key=lambda p: p.count("\\"), reverse=True)
    for directory in directories:
        _delete_empty_directory(tree, directory)
        deleted += 1
    return deleted


def delete_entry(tree: SmbTree, entry: DirEntry) -> int:
    """Delete a walked destination entry (a whole tree for a directory); returns the count."""
    if entry.is_dir and not entry.is_reparse_point:
        return delete_tree(tree, entry.path)
    delete_file(tree, entry.path)
    return 1
