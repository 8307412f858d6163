"""Each dataset's files, described once: the list that both "is it on disk" and "fetch it" read.

A file-based dataset is a tuple of :class:`Resource` s, like torchvision's ``resources`` lists:
each names one file by its path under the data directory, its published md5 and where it comes
from (download addresses, or a member of an archive that is itself a :class:`Resource`).

* :func:`ensure` turns the tuple into paths on disk, downloading, extracting and verifying as
  needed; every dataset function calls it.
* :func:`on_disk` answers, without reading or downloading anything, whether :func:`ensure`
  with ``download=False`` finds every file; the registry's ``is_available`` calls it with the
  same tuple (the registry's ``Spec.resources``).

Verification, and why it is cheap after the first time
-------------------------------------------------------
With ``verify=True`` (the default) a file with a published md5 is hashed on first use and
compared with it; a mismatch raises :class:`~nodeopt.data.files.DataCorrupt` naming the file,
both sums and the fix. A success is remembered under the file's size and modification time
(``st_size``, ``st_mtime_ns``) in two places:

* in this process (a dict), so a second load does not even read the stamp;
* in a JSON stamp ``<data_dir>/.nodeopt-md5.json`` (``{"files": {relative path: {"size",
  "mtime_ns", "md5"}}}``, written with :func:`~nodeopt.data.files.atomic_write`), so that later
  processes, such as every rank of a distributed run, skip the hash too.

A file whose size or modification time changed is hashed again. Downloads and extractions hash
the bytes while writing them and record the result at once, so a fresh file is never read twice.
Where the data directory is read-only the stamp is skipped (logged) and only the in-process
memory applies. The stamp guards against accidents (a truncated copy, another version of a
file), not against someone who can write to the data directory.

Files without a published sum (``md5=None``: the MAF bundle's members, the UEA ``.ts`` files,
MNIST's decompressed copies) are not hashed on load: a download of such a file is checked
against the md5 Zenodo publishes (``zenodo_record``), and a member is trusted because its
archive was verified.

``verify=False`` skips the check of files already on disk, and of the members taken out of an
archive already on disk; it is for files made by hand in the official format (a subset, the
tests' tiny files), whose sums cannot match. Downloads are always checked.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

from .files import (TIMEOUT_S, atomic_write, corrupt, extract_members, fetch, md5sum, unavailable,
                    zenodo_file)

logger = logging.getLogger(__name__)

#: Name of the stamp of verified files, at the top of the data directory.
STAMP = ".nodeopt-md5.json"
_MD5 = re.compile(r"[0-9a-f]{32}")
#: (absolute path, size, mtime_ns) -> md5 verified in this process.
_VERIFIED: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class Resource:
    """One file that a dataset reads.

    Attributes:
        path: where the file lives, relative to the data directory, ``/``-separated
            (``"MNIST/raw/train-images-idx3-ubyte.gz"``).
        md5: the published md5 (32 lowercase hex digits), checked on download and, with
            ``verify=True``, on first use; None where no citable source publishes one.
        urls: download addresses, tried in order (empty for a member of an archive).
        archive: the resource this file is extracted from, or None.
        member: the file's name inside ``archive`` (given together with ``archive``).
        alternatives: other paths, relative to the data directory, holding the same data in
            another encoding and read instead when present (torchvision keeps MNIST's
            decompressed IDX files next to the ``.gz``); not verified.
        zenodo_record: the Zenodo record that publishes the file under its file name; when
            ``md5`` is None, the download's address and md5 are read from the record's metadata
            at download time.

    Raises:
        ValueError: a path that is absolute or climbs out with ``..``, an md5 that is not 32 hex
            digits, ``archive`` without ``member`` (or the reverse), an archive inside an
            archive, or addresses on a member.
    """

    path: str
    md5: Optional[str] = None
    urls: tuple[str, ...] = ()
    archive: Optional["Resource"] = None
    member: Optional[str] = None
    alternatives: tuple[str, ...] = ()
    zenodo_record: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "urls", tuple(self.urls))
        object.__setattr__(self, "alternatives", tuple(self.alternatives))
        for p in (self.path, *self.alternatives):
            pure = PurePosixPath(p)
            if not p or pure.is_absolute() or ".." in pure.parts or "\\" in p:
                raise ValueError(f"Resource path must be relative to the data directory, '/'-separated and "
                                 f"without '..', got {p!r}.")
        if self.md5 is not None and not _MD5.fullmatch(self.md5):
            raise ValueError(f"Resource {self.path!r}: md5 must be 32 lowercase hex digits or None, "
                             f"got {self.md5!r}.")
        if (self.archive is None) != (self.member is None):
            raise ValueError(f"Resource {self.path!r}: archive= and member= go together, got "
                             f"archive={self.archive!r} and member={self.member!r}.")
        if self.archive is not None and (self.archive.archive is not None or self.urls):
            raise ValueError(f"Resource {self.path!r}: a member is fetched through its archive, which must be "
                             f"a downloadable file itself; give urls= to the archive, not the member.")


def locate(resource: Resource, root: Path) -> Optional[Path]:
    """The file on disk that stands for ``resource`` (its path, else an alternative), or None."""
    for rel in (resource.path, *resource.alternatives):
        if (root / rel).is_file():
            return root / rel
    return None


def on_disk(resources: Sequence[Resource], root: Path) -> bool:
    """Whether ``ensure(resources, root, download=False)`` finds every file (or its archive).

    Only looks at which files exist: nothing is read, hashed or downloaded.
    """
    return all(locate(r, root) is not None or (r.archive is not None and (root / r.archive.path).is_file())
               for r in resources)


def ensure(resources: Sequence[Resource], root: Path, *, dataset: str, download: bool = True,
           verify: bool = True, timeout: float = TIMEOUT_S) -> list[Path]:
    """Paths of ``resources`` under ``root``, in order, fetching and checking what is needed.

    A file on disk is used (and, with ``verify``, checked against its md5 on first use); a missing
    member of an archive is extracted from the archive (downloaded first if missing); any other
    missing file is downloaded. Downloads need ``download=True``.

    Raises:
        DataUnavailable: a file is missing and ``download`` is false or every address failed.
        DataCorrupt: a file, download or archive member does not match its published md5.
    """
    paths: list[Optional[Path]] = []
    members: dict[Resource, list[int]] = {}  # archive -> indices of its missing members
    for i, r in enumerate(resources):
        found = locate(r, root)
        if found is None and r.archive is not None:
            members.setdefault(r.archive, []).append(i)
        elif found is None:
            found = _download(r, root, dataset, download, timeout)
        elif verify and r.md5 is not None and found == root / r.path:
            check(found, r.md5, root)
        paths.append(found)
    for archive, indices in members.items():
        wanted = [resources[i] for i in indices]
        path = root / archive.path
        if not path.is_file() and not download:
            raise unavailable(dataset, root / wanted[0].path, archive.urls, "download=False was given", archive=path)
        if not path.is_file():
            _download(archive, root, dataset, download, timeout)
        elif verify and archive.md5 is not None:
            check(path, archive.md5, root)
        published = {r.member: r.md5 for r in wanted if r.md5 is not None} if verify else {}
        sums = extract_members(path, root, {r.member: r.path for r in wanted}, published)
        for i, r in zip(indices, wanted):
            paths[i] = root / r.path
            if r.md5 is not None and sums[r.member] == r.md5:
                remember(root / r.path, r.md5, root)
    return paths


def _download(r: Resource, root: Path, dataset: str, download: bool, timeout: float) -> Path:
    path = root / r.path
    if not download:
        raise unavailable(dataset, path, r.urls, "download=False was given")
    urls, md5 = list(r.urls), r.md5
    if md5 is None and r.zenodo_record is not None:
        url, md5 = zenodo_file(r.zenodo_record, PurePosixPath(r.path).name, dataset=dataset, path=path,
                               timeout=timeout)
        urls = [url] + [u for u in urls if u != url]
    found = fetch(path, urls, md5, dataset=dataset, timeout=timeout)
    if r.md5 is not None:
        remember(path, found, root)
    return path


# ----------------------------------------------------------------------------- verification

def check(path: Path, md5: str, root: Path) -> None:
    """Raise :class:`DataCorrupt` unless ``path`` has md5 ``md5``; hashes only files not yet verified.

    ``root`` is the data directory whose stamp records the result.
    """
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(key) == md5:
        return
    entry = _read_stamp(root).get(path.relative_to(root).as_posix())
    if entry != {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": md5}:
        logger.info("verifying the md5 of %s (%d bytes)", path, stat.st_size)
        found = md5sum(path)
        if found != md5:
            raise corrupt(path, f"its md5 is {found}, not the published {md5}",
                          "(For a file you made yourself in the official format, pass verify=False.)")
        _write_stamp(root, path, stat, md5)
    _VERIFIED[key] = md5


def remember(path: Path, md5: str, root: Path) -> None:
    """Record that ``path`` (just written and hashed) has md5 ``md5``, so it is not hashed again."""
    stat = path.stat()
    _VERIFIED[(str(path), stat.st_size, stat.st_mtime_ns)] = md5
    _write_stamp(root, path, stat, md5)


def _read_stamp(root: Path) -> dict:
    try:
        files = json.loads((root / STAMP).read_text(encoding="utf-8")).get("files", {})
        return files if isinstance(files, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as err:  # unreadable or not our format: start afresh
        logger.debug("ignoring the stamp %s: %s", root / STAMP, err)
        return {}


def _write_stamp(root: Path, path: Path, stat: os.stat_result, md5: str) -> None:
    """Add one entry to the stamp (read, update, atomic write); a lost race only costs a re-hash."""
    files = _read_stamp(root)
    files[path.relative_to(root).as_posix()] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": md5}
    try:
        with atomic_write(root / STAMP, "w", encoding="utf-8") as f:
            json.dump({"files": files}, f, indent=1, sort_keys=True)
    except OSError as err:  # a read-only data directory: remember in this process only
        logger.info("could not record the verified md5 of %s in %s: %s", path, root / STAMP, err)
