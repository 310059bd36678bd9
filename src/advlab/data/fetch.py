"""Checksum-verified download of the datasets' official files into the data root.

Every file is checked against its published MD5, written to a temporary file and renamed into place
atomically, so an interrupted download never leaves a half file under the final name. Files already
present with the right MD5 are skipped. Without a network the first connection fails within
``timeout`` seconds and the error says which files to place by hand, and where.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tarfile
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from advlab._validate import check_float
from advlab.data._core import dataset_info, resolve_data_root

_CHUNK = 1 << 20
_MAX_EXTRACTED_BYTES = 1 << 30


@dataclass(frozen=True)
class RemoteFile:
    """One file to download: its name (same at the mirror and on disk) and published MD5."""

    name: str
    md5: str


@dataclass(frozen=True)
class Source:
    """Where a dataset's files come from.

    Args:
        folder: folder under the data root the files go to (``mnist``, ``fashion-mnist``, ``cifar10``).
        mirrors: base URLs tried in order; a file's URL is ``mirror + file.name``.
        files: the files to download.
        extract: files inside the (single) downloaded ``.tar.gz`` to keep, relative to ``folder``, with MD5s;
            empty when nothing is extracted.
    """

    folder: str
    mirrors: tuple[str, ...]
    files: tuple[RemoteFile, ...]
    extract: tuple[RemoteFile, ...] = ()


SOURCES: dict[str, Source] = {
    "mnist": Source(
        folder="mnist",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        files=(
            RemoteFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            RemoteFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            RemoteFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
    ),
    "fashion-mnist": Source(
        folder="fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=(
            RemoteFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            RemoteFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            RemoteFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
    ),
    "cifar10": Source(
        folder="cifar10",
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files=(RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        extract=(
            RemoteFile("cifar-10-batches-py/data_batch_1", "c99cafc152244af753f735de768cd75f"),
            RemoteFile("cifar-10-batches-py/data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            RemoteFile("cifar-10-batches-py/data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            RemoteFile("cifar-10-batches-py/data_batch_4", "634d18415352ddfa80567beed471001a"),
            RemoteFile("cifar-10-batches-py/data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            RemoteFile("cifar-10-batches-py/test_batch", "40351d587109b95175f43aff81a1287e"),
            RemoteFile("cifar-10-batches-py/batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        ),
    ),
}
"""Official sources and MD5s of each downloadable dataset (``digits`` ships with scikit-learn)."""


class DownloadError(ConnectionError):
    """A download failed (offline, host unreachable, HTTP error); the message says what to place by hand."""


class ChecksumError(ValueError):
    """A downloaded or present file does not have its published MD5."""


def md5sum(path: str | Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _has_md5(path: Path, md5: str) -> bool:
    return path.is_file() and md5sum(path) == md5


def _manual_instructions(name: str, source: Source, target: Path) -> str:
    lines = [f"To install {name} by hand, download these files and place them in {target}/ :"]
    for f in source.files:
        urls = " or ".join(m + f.name for m in source.mirrors)
        lines.append(f"  {f.name}  (md5 {f.md5})  from {urls}")
    if source.extract:
        lines.append(
            f"then run `advlab data fetch {name} --data-root {target.parent}` again to verify and unpack it "
            "(it is not downloaded again), "
            f"or unpack it yourself so that {target}/{source.extract[0].name.split('/')[0]}/ holds "
            + ", ".join(PurePosixPath(f.name).name for f in source.extract)
            + "."
        )
    return "\n".join(lines)


def _check_resolvable(url: str, timeout: float) -> None:
    """Fails within ``timeout`` when the host name cannot be resolved (urllib's timeout skips DNS)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if urllib.request.getproxies().get(parts.scheme):
        return  # the proxy resolves the name
    outcome: list[BaseException | None] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
            outcome.append(None)
        except OSError as err:
            outcome.append(err)

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise urllib.error.URLError(f"resolving {parts.hostname} took longer than {timeout:g} s")
    if outcome[0] is not None:
        raise urllib.error.URLError(outcome[0])


class _Unreachable(Exception):
    """No connection to the mirror (offline, refused, timed out, name not resolved)."""


def _download(
    url: str, dest: Path, md5: str, timeout: float, progress: Callable[[int, int | None], None] | None
) -> None:
    """Downloads ``url`` to ``dest`` through a temporary file, verifying ``md5`` before renaming.

    Raises ``urllib.error.HTTPError`` when the server answers with an error, ``_Unreachable`` when there
    is no connection, :class:`ChecksumError` on a wrong MD5; local file-system errors propagate as they are.
    """
    try:
        _check_resolvable(url, timeout)
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError) as err:
        raise _Unreachable(str(getattr(err, "reason", err))) from err
    dest.parent.mkdir(parents=True, exist_ok=True)
    with response:
        total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        size = int(total) if total and str(total).isdigit() else None
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            done = 0
            with os.fdopen(fd, "wb") as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except OSError as err:  # timeout or reset in the middle of the transfer
                        raise _Unreachable(f"transfer interrupted after {done} bytes ({err})") from err
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, size)
                out.flush()
                os.fsync(out.fileno())
            got = digest.hexdigest()
            if got != md5:
                raise ChecksumError(
                    f"MD5 mismatch for {url}: expected {md5}, got {got} ({done} bytes). The download was "
                    f"corrupted or the mirror serves another file; it was discarded. Try again, or place the "
                    f"official file at {dest} by hand."
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


def _safe_extract(archive: Path, target: Path, keep: Sequence[RemoteFile]) -> None:
    """Extracts the regular files named in ``keep`` from a ``.tar.gz``, refusing unsafe member paths."""
    wanted = {f.name for f in keep}
    base = target.resolve()
    extracted = 0
    with tarfile.open(archive, mode="r:gz") as tar:
        for member in tar:
            rel = PurePosixPath(member.name)
            if rel.is_absolute() or ".." in rel.parts or member.name.startswith(("/", "\\")):
                raise ValueError(
                    f"{archive}: refusing member {member.name!r}, whose path leaves the target folder; "
                    "the archive is not the official one, delete it and fetch again"
                )
            if member.isdir() or str(rel) not in wanted:
                continue
            if not member.isfile():
                raise ValueError(f"{archive}: refusing member {member.name!r}, which is a link or a special file")
            dest = (target / rel).resolve()
            if base not in dest.parents:
                raise ValueError(f"{archive}: refusing member {member.name!r}, outside {target}")
            extracted += member.size
            if extracted > _MAX_EXTRACTED_BYTES:
                raise ValueError(f"{archive}: unpacks to more than {_MAX_EXTRACTED_BYTES} bytes, refusing")
            source = tar.extractfile(member)
            if source is None:
                raise ValueError(f"{archive}: cannot read member {member.name!r}")
            _write_atomic(source, dest)


def _write_atomic(source: IO[bytes], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                out.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _file_progress(
    progress: Callable[[str, int, int | None], None] | None, name: str
) -> Callable[[int, int | None], None] | None:
    if progress is None:
        return None
    report = progress

    def per_file(done: int, total: int | None) -> None:
        report(name, done, total)

    return per_file


def fetch_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 5.0,
    mirrors: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> Path:
    """Downloads the official files of ``name`` into ``<root>/<name>/``, verifying every MD5.

    Files already present with the right MD5 are kept as they are. Each file is written to a temporary
    file and renamed when its MD5 matches. CIFAR-10's archive is unpacked (member paths are checked; only
    the batch files are written) and removed afterwards. ``digits`` ships with scikit-learn: nothing to do.

    Args:
        name: a dataset name (see :data:`SOURCES`).
        root: the data root; default :func:`advlab.data.default_data_root`.
        timeout: seconds to wait for a connection or data before giving up (default 5).
        mirrors: base URLs to use instead of the official ones (e.g. a local mirror); ``file://`` works.
        log: called with one line per step (e.g. ``print``).
        progress: called as ``progress(file_name, bytes_done, total_or_None)`` while downloading.

    Returns:
        The dataset folder under the root (the root itself for ``digits``).

    Raises:
        ValueError: unknown dataset, or a ``timeout`` that is not > 0 (``TypeError`` if it is not a number).
        DownloadError: offline / unreachable host / HTTP error, after at most ``timeout`` seconds per try;
            the message lists the files to place by hand and the folder to put them in.
        ChecksumError: a download whose MD5 does not match (it is discarded).

    Example:
        >>> from advlab.data import fetch_dataset
        >>> fetch_dataset("mnist", "~/data")  # doctest: +SKIP
        PosixPath('/home/me/data/mnist')
    """
    dataset_info(name)  # validates the name, listing the valid ones
    check_float("timeout (seconds)", timeout, inclusive=False)
    base = resolve_data_root(root)
    say = log or (lambda _msg: None)
    if name not in SOURCES:
        say(f"{name} is bundled with scikit-learn; nothing to download")
        return base
    source = SOURCES[name]
    if mirrors is not None:
        mirrors = tuple(m if m.endswith("/") else m + "/" for m in mirrors)
        if not mirrors:
            raise ValueError("mirrors must name at least one base URL, or be None for the official ones")
        source = Source(source.folder, mirrors, source.files, source.extract)
    target = base / source.folder

    if source.extract and all(_has_md5(target / f.name, f.md5) for f in source.extract):
        say(f"{name}: all files present and verified in {target}")
        return target

    for remote in source.files:
        dest = target / remote.name
        if _has_md5(dest, remote.md5):
            say(f"{name}: {remote.name} present, MD5 verified")
            continue
        errors: list[str] = []
        for mirror in source.mirrors:
            url = mirror + remote.name
            say(f"{name}: downloading {url}")
            try:
                _download(url, dest, remote.md5, timeout, _file_progress(progress, remote.name))
                break
            except urllib.error.HTTPError as err:  # the server answered: try the next mirror
                errors.append(f"{url}: HTTP {err.code} {err.reason}")
            except _Unreachable as err:  # no connection: most likely offline, stop at once
                raise DownloadError(
                    f"could not download {name}: {url}: {err}. Are you offline or behind a firewall?\n"
                    + _manual_instructions(name, source, target)
                ) from err
        else:
            raise DownloadError(
                f"could not download {name}:\n  "
                + "\n  ".join(errors)
                + "\n"
                + _manual_instructions(name, source, target)
            )
        say(f"{name}: {remote.name} downloaded, MD5 verified")

    if source.extract:
        archive = target / source.files[0].name
        say(f"{name}: unpacking {archive.name}")
        _safe_extract(archive, target, source.extract)
        bad = [f.name for f in source.extract if not _has_md5(target / f.name, f.md5)]
        if bad:
            raise ChecksumError(
                f"{archive}: unpacked files with unexpected MD5: {', '.join(bad)}; delete {archive} and fetch again"
            )
        archive.unlink()
        say(f"{name}: unpacked and verified into {target / source.extract[0].name.split('/')[0]}")
    return target
