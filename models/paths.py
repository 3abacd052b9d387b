"""Files the commands write where the user names them: the checks every command makes alike."""

from __future__ import annotations

from pathlib import Path


def missing_folder(file: Path, action: str) -> str | None:
    """What is wrong when ``file``'s folder does not exist, else None. A mistyped folder is never
    made for the user: the file would land somewhere they did not mean."""
    if file.parent.is_dir():
        return None
    if file.parent.exists():
        return f"{file.parent} is a file, not a folder; {action} elsewhere"
    return f"no folder {file.parent}; create it or {action} elsewhere"


def kept_file(file: Path, force: bool) -> str | None:
    """What is wrong when ``file`` exists and ``force`` was not given, else None: what is there
    is the user's, so it is replaced only when asked."""
    if file.exists() and not file.is_dir() and not force:
        return f"{file} exists; choose another name or add --force to overwrite it"
    return None
