"""Repository names ("codellama/CodeLlama-7b-hf") read from the local Hugging Face cache.

Models fetched once with huggingface_hub (``hf download``, or any transformers
``from_pretrained``) sit in its cache folder as
``models--ORG--NAME/refs/REVISION`` (a commit hash) and ``models--ORG--NAME/snapshots/COMMIT/``
(the files). A name that is not a local path is looked up there, with no network, so the
names that work with transformers offline work here too. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, found from the same environment variables in the same
    order: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub,
    ~/.cache/huggingface/hub."""

    def expand(p: str) -> str:
        return os.path.expandvars(os.path.expanduser(p))

    home = expand(os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")))
    return Path(expand(os.getenv("HF_HUB_CACHE", os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub")))))


def is_repo_id(name: object) -> bool:
    """Whether ``name`` reads as a Hub repository name ("org/name")."""
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and ".." not in name and "--" not in name


def cached_snapshot(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The cached snapshot folder of model ``repo_id`` at ``revision`` (a branch or tag name, or
    a commit hash; default "main"), or None when the cache does not hold it."""
    revision = revision or "main"
    repo = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    repo = repo / ("models--" + repo_id.replace("/", "--"))
    if _COMMIT.match(revision):
        commit = revision
    else:
        ref = repo / "refs" / revision
        if not ref.is_file():
            return None
        commit = ref.read_text(encoding="utf-8").strip()
    snapshot = repo / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


def local_folder(name_or_path: str | os.PathLike[str], revision: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """An existing local path as it is; else, for a repository name, its cached snapshot (in
    ``cache_dir``, default hub_cache_dir()); else the path as given (the caller reports it
    missing, with ``not_found_hint``)."""
    path = Path(name_or_path).expanduser()
    if not path.exists() and is_repo_id(str(name_or_path)):
        snapshot = cached_snapshot(str(name_or_path), revision, cache_dir)
        if snapshot is not None:
            return snapshot
    return path


def not_found_hint(name_or_path: str | os.PathLike[str], revision: str | None = None,
                   cache_dir: str | os.PathLike[str] | None = None) -> str:
    """What to add to a "does not exist" error: for a repository name, where it was looked for
    and how to fetch it ("" for anything else)."""
    name = str(name_or_path)
    if not is_repo_id(name):
        return ""
    at = f" at revision {revision!r}" if revision and revision != "main" else ""
    where = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    fetch = f"`hf download {name}" + (f" --cache-dir {where}`" if cache_dir is not None else "`")
    return f", nor is {name!r}{at} in the Hugging Face cache ({where}): fetch it once with {fetch}"
