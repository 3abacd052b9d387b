"""Files the commands write where the user names them: the checks every command makes alike."""

from __future__ import annotations

from pathlib import Path


def missing_folder(file: Path, action: str) -> str | None:
    """What is wrong when ``file``'s folder does not exist, else None. A mistyped folder is never
    made for the user: the file would land somewhere they did not mean."""
    if file.parent.is_dir():
        return None
    return f"no folder {file.parent}; create it or {action} elsewhere"
