"""`prepare-data FORMAT DIR --download`: fetch a data set's official files into DIR, check them, extract them.

- Download: HTTP(S) with a progress bar into `<file>.part`; a cut connection is resumed with an HTTP Range
  request (automatically a few times, and by running the same command again, since the `.part` file stays).
- Check: every published checksum of the file (MD5 and/or SHA-256, see fgcli.data.sources). A mismatch
  deletes the download; the error names the URL and both sums.
- Extract: tar (plain, gz, bz2, xz) and zip. Every member is checked before anything is written: no absolute
  paths, no '..', no symbolic or hard links, no device files or FIFOs, at most `ExtractLimits` bytes (and a
  bounded expansion ratio), and the disk must have room. Members are written into a hidden staging folder in
  DIR and moved into place when the whole archive is out; the archive is then deleted.
- `DIR/.fgcli_download.json` records the files that are done, so running the command again skips them.

`--url` overrides where a file comes from: one URL per file (matched by its file name, or any name when the
data set has a single file) or a folder URL ending in '/' for all files. The registry's checksums still apply
to a mirror; `--md5` / `--sha256` replace them for the one file given with `--url`. A file with no known
checksum is downloaded with a warning that it is not verified.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from rich.progress import Progress

from fgcli import __version__
from fgcli.console import log, progress_bar
from fgcli.data.locking import folder_lock
from fgcli.data.sources import SOURCES, RemoteFile, Source
from fgcli.errors import UserError
from fgcli.io import atomic_write_text

STATE_FILE = ".fgcli_download.json"
STAGING_PREFIX = ".fgcli-extract-"
CHUNK = 1 << 20
SCHEMES = ("http", "https", "file")


@dataclass(frozen=True)
class ExtractLimits:
    """What an archive may expand to."""

    max_bytes: int = 64 << 30  # all members together (the largest supported data set is ~10 GB)
    max_ratio: float = 100.0  # extracted bytes per archive byte (JPEG archives are ~1; a bomb is >> 100)
    max_members: int = 2_000_000


class _Dropped(Exception):
    """The transfer stopped before the end; the `.part` file can be resumed."""


class _Unsafe(Exception):
    """An archive member that must not be extracted."""


def download_dataset(fmt: str, target: str | Path, *, urls: Sequence[str] = (), md5: str | None = None,
                     sha256: str | None = None, attempts: int = 3, timeout: float = 60.0,
                     limits: ExtractLimits | None = None) -> Path:
    """Download, check and extract data set `fmt` into folder `target` (created); returns the folder."""
    source = SOURCES.get(fmt)
    if source is None:
        raise UserError(f"--download has no source for the {fmt} format; it knows {', '.join(SOURCES)}. Get the "
                        "files yourself and run without --download.")
    files = plan_files(source, urls, md5, sha256)
    folder = Path(target).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; --download needs a folder to download into.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder}: {e.strerror or e}. Choose another folder.") from None
    with folder_lock(folder):
        state = _load_state(folder)
        for stale in folder.glob(f"{STAGING_PREFIX}*"):  # left by an interrupted extraction
            shutil.rmtree(stale, ignore_errors=True)
        done: dict[str, Any] = state.setdefault("files", {})
        if all(done.get(item.name, {}).get("done") for item in files):
            log.info(f"download: the {fmt} files are already downloaded and checked in {folder}; skipping")
            return folder
        with progress_bar(transfer=True) as progress:
            for item in files:
                if done.get(item.name, {}).get("done"):
                    log.info(f"download: {item.name} was already downloaded and checked; skipping it")
                    continue
                dest = folder / item.name
                if dest.is_file():  # downloaded but not extracted yet, or put there by the user: check it
                    verify(dest, item, progress=progress, origin=f"{dest} (already in the folder)")
                else:
                    fetch(item, dest, attempts=attempts, timeout=timeout, note=source.note, progress=progress)
                if item.archive:
                    extract_archive(dest, folder, limits or ExtractLimits(), progress=progress)
                    dest.unlink()
                done[item.name] = {"url": item.url, "md5": item.md5, "sha256": item.sha256, "done": True}
                state["format"] = fmt
                atomic_write_text(folder / STATE_FILE, json.dumps(state, indent=1) + "\n")
    log.info(f"download: {fmt} data set complete in {folder}")
    return folder


def plan_files(source: Source, urls: Sequence[str], md5: str | None, sha256: str | None) -> list[RemoteFile]:
    """The source's files with `--url` / `--md5` / `--sha256` applied (see the module docstring)."""
    files = {f.name: f for f in source.files}
    custom: set[str] = set()
    for url in urls:
        _check_url(url)
        if url.endswith("/"):
            files = {n: replace(f, url=url + n) for n, f in files.items()}
            custom |= set(files)
            continue
        name = Path(urllib.parse.urlsplit(url).path).name
        if name not in files:
            if len(files) != 1:
                raise UserError(f"--url {url}: its file name '{name}' is none of the {source.format} files "
                                f"({', '.join(files)}). Give one --url per file, named like these, or a folder "
                                "URL ending in '/'.")
            name = next(iter(files))
        files[name] = replace(files[name], url=url)
        custom.add(name)
    if md5 is not None and sha256 is not None:
        raise UserError("give --md5 or --sha256, not both.")
    if md5 is not None or sha256 is not None:
        flag, value, digits = ("--md5", md5, 32) if md5 is not None else ("--sha256", sha256, 64)
        assert value is not None
        if not re.fullmatch(rf"[0-9a-fA-F]{{{digits}}}", value):
            raise UserError(f"{flag} must be {digits} hexadecimal digits, got '{value}'.")
        if len(files) == 1:
            name = next(iter(files))
        elif len(custom) == 1 and not any(u.endswith("/") for u in urls):
            name = next(iter(custom))
        else:
            raise UserError(f"{flag} applies to the one file given with --url; the {source.format} data set has "
                            f"{len(files)} files ({', '.join(files)}): give exactly one --url named like one of them.")
        files[name] = replace(files[name], md5=value.lower() if md5 is not None else None,
                              sha256=value.lower() if sha256 is not None else None)
    missing = [f.name for f in files.values() if f.url is None]
    if missing:
        raise UserError(source.note or f"no download URL is known for {', '.join(missing)}; pass --url.")
    for f in files.values():
        if f.md5 is None and f.sha256 is None:
            log.warning(f"download: no published checksum for {f.name} ({f.url}); it is not verified. Pass "
                        "--sha256 or --md5 to check it.")
    return list(files.values())


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise UserError(f"--url {url}: only {', '.join(s + '://' for s in SCHEMES)} URLs are supported.")


# ---------------------------------------------------------------------------------------------- download
def fetch(item: RemoteFile, dest: Path, *, attempts: int = 3, timeout: float = 60.0, note: str = "",
          progress: Progress | None = None) -> None:
    """Download `item.url` to `dest` via `dest.part` (resumed), check its checksums, rename it into place."""
    assert item.url is not None
    part = dest.with_name(dest.name + ".part")
    task = progress.add_task(f"downloading {item.name}", total=item.size) if progress is not None else None
    reason = ""
    try:
        for attempt in range(1, max(1, attempts) + 1):
            try:
                _transfer(item.url, part, item.size, timeout, note, progress, task)
                break
            except _Dropped as e:
                reason = str(e)
                have = part.stat().st_size if part.exists() else 0
                if attempt < attempts:
                    log.warning(f"download: {item.url} stopped at {_human(have)} ({reason}); resuming "
                                f"(try {attempt + 1} of {attempts})")
        else:
            have = part.stat().st_size if part.exists() else 0
            raise UserError(f"download of {item.url} stopped at {_human(have)} ({reason}), {attempts} time(s). "
                            f"Run the same command again to resume from {part.name}.")
    finally:
        if progress is not None and task is not None:
            progress.remove_task(task)
    verify(part, item, progress=progress)
    os.replace(part, dest)


def _transfer(url: str, part: Path, size: int | None, timeout: float, note: str, progress: Progress | None,
              task: Any) -> None:
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"fgcli/{__version__}", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing left to send: the .part is complete (the checksum will tell)
            return
        if e.code >= 500:
            raise _Dropped(f"HTTP {e.code} {e.reason}") from None
        raise UserError(f"download of {url} failed: HTTP {e.code} {e.reason}. "
                        f"{note or 'Check the URL, or pass --url with a mirror.'}") from None
    except urllib.error.URLError as e:
        raise UserError(f"cannot reach {url} ({getattr(e, 'reason', e)}). Check the network connection. "
                        f"{note or 'Or pass --url with a mirror.'}".rstrip()) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise _Dropped(f"{type(e).__name__}: {e}") from None
    with response:
        status = response.getcode()
        total = size
        if status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != start:
                part.unlink(missing_ok=True)  # resumed somewhere else: start over
                raise _Dropped("the server resumed at another offset")
            total = int(match.group(2)) if match.group(2) != "*" else total
            mode = "ab"
        else:
            if start:
                log.info(f"download: {url} does not support resuming; downloading it from the start")
            start, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else total
        have = start
        if progress is not None:
            progress.update(task, completed=start, total=total)
        try:
            handle = open(part, mode)
        except OSError as e:
            raise UserError(f"cannot write {part}: {e.strerror or e}.") from None
        with handle:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Dropped(f"{type(e).__name__}: {e}".rstrip(": ")) from None
                if not chunk:
                    break
                try:
                    handle.write(chunk)
                except OSError as e:
                    raise UserError(f"cannot write {part}: {e.strerror or e}. Free disk space and run the same "
                                    "command again to resume.") from None
                have += len(chunk)
                if progress is not None:
                    progress.update(task, completed=have)
    if total is not None and have < total:
        raise _Dropped(f"connection closed after {_human(have)} of {_human(total)}")


def verify(path: Path, item: RemoteFile, progress: Progress | None = None, origin: str | None = None) -> None:
    """Check every checksum of `item` on `path`; on a mismatch delete `path` and raise naming the origin (by
    default the URL) and both sums."""
    wanted = {algo: value.lower() for algo, value in (("md5", item.md5), ("sha256", item.sha256)) if value}
    if not wanted:
        return
    hashers = {algo: hashlib.new(algo) for algo in wanted}
    task = progress.add_task(f"checking {item.name}", total=path.stat().st_size) if progress is not None else None
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
            if progress is not None:
                progress.advance(task, len(chunk))
    if progress is not None:
        progress.remove_task(task)
    for algo, want in wanted.items():
        got = hashers[algo].hexdigest()
        if got != want:
            path.unlink(missing_ok=True)
            what = "download" if origin is None else "file"
            raise UserError(f"checksum mismatch for {origin or item.url}: expected {algo} {want}, got {got}. The "
                            f"{what} was deleted; run the command again to retry, or pass --url with another "
                            "mirror.")


# ---------------------------------------------------------------------------------------------- extraction
@dataclass
class _Member:
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    mtime: float | None
    ref: Any  # TarInfo or ZipInfo


def extract_archive(archive: Path, target: Path, limits: ExtractLimits | None = None,
                    progress: Progress | None = None) -> list[Path]:
    """Safely extract a tar or zip `archive` into `target`; returns the top-level paths it created or merged.

    Refuses the whole archive (writing nothing, deleting it) when any member is unsafe or a limit is passed.
    """
    limits = limits or ExtractLimits()
    try:
        if tarfile.is_tarfile(archive):
            opened: Any = tarfile.open(archive, "r:*")
        elif zipfile.is_zipfile(archive):
            opened = zipfile.ZipFile(archive)
        else:
            raise UserError(f"{archive} is not a tar or zip archive. Delete it and download it again.")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(f"cannot open {archive} ({type(e).__name__}: {e}). Delete it and download it again.") from None
    with opened:
        try:
            members = list(_plan(opened, archive, limits))
        except _Unsafe as e:
            archive.unlink(missing_ok=True)
            raise UserError(f"refusing to extract {archive.name}: {e}. Nothing was extracted and the archive was "
                            "deleted; use the official files.") from None
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise UserError(f"{archive} is corrupt ({type(e).__name__}: {e}). Delete it and download it "
                            "again.") from None
        total = sum(m.size for m in members)
        free = shutil.disk_usage(target).free
        if total > free:
            raise UserError(f"extracting {archive.name} needs {_human(total)} but {target} has {_human(free)} free. "
                            "Free disk space or choose another folder.")
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))
        task = progress.add_task(f"extracting {archive.name}", total=total) if progress is not None else None
        try:
            for m in members:
                _write_member(opened, m, staging, archive, progress, task)
            return _merge(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if progress is not None and task is not None:
                progress.remove_task(task)


def _plan(opened: Any, archive: Path, limits: ExtractLimits) -> Iterator[_Member]:
    """Check every member first (nothing is written while one of them may still be refused)."""
    total, count = 0, 0
    archive_size = max(archive.stat().st_size, 1)
    for m in (opened if isinstance(opened, tarfile.TarFile) else opened.infolist()):
        if isinstance(m, tarfile.TarInfo):
            name, is_dir, size, mtime = m.name, m.isdir(), m.size, float(m.mtime)
            if m.issym() or m.islnk():
                raise _Unsafe(f"member '{name}' is a {'symbolic' if m.issym() else 'hard'} link to '{m.linkname}'")
            if m.ischr() or m.isblk() or m.isfifo():
                raise _Unsafe(f"member '{name}' is a device file or FIFO")
            if not (is_dir or m.isreg()):
                raise _Unsafe(f"member '{name}' is not a regular file or folder (tar type {m.type!r})")
        else:
            name, is_dir, size, mtime = m.filename, m.is_dir(), m.file_size, None
            mode = m.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _Unsafe(f"member '{name}' is a symbolic link")
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                raise _Unsafe(f"member '{name}' is a device file, FIFO or socket")
            if m.flag_bits & 0x1:
                raise _Unsafe(f"member '{name}' is encrypted")
        parts = _member_parts(name)
        if not parts:
            continue  # the archive's root folder ('.' or './')
        count += 1
        total += 0 if is_dir else size
        if count > limits.max_members:
            raise _Unsafe(f"it has more than {limits.max_members} members")
        if total > limits.max_bytes:
            raise _Unsafe(f"it expands to more than {_human(limits.max_bytes)} (the size limit)")
        if total > limits.max_ratio * archive_size:
            raise _Unsafe(f"it expands to more than {limits.max_ratio:g} times its own size (a compression bomb?)")
        yield _Member(parts, is_dir, 0 if is_dir else size, mtime, m)


def _member_parts(name: str) -> tuple[str, ...]:
    """The relative path parts of a member name, or _Unsafe for absolute names and '..'."""
    if "\x00" in name:
        raise _Unsafe(f"member {name!r} has a NUL byte in its name")
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise _Unsafe(f"member '{name}' has an absolute path")
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _Unsafe(f"member '{name}' points outside the target folder ('..')")
    return parts


def _write_member(opened: Any, m: _Member, staging: Path, archive: Path, progress: Progress | None,
                  task: Any) -> None:
    dest = staging.joinpath(*m.parts)
    try:
        if m.is_dir:
            dest.mkdir(parents=True, exist_ok=True)
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        source: IO[bytes] | None = (opened.extractfile(m.ref) if isinstance(opened, tarfile.TarFile)
                                    else opened.open(m.ref))
        if source is None:
            raise UserError(f"{archive}: member {'/'.join(m.parts)} cannot be read. Download the archive again.")
        written = 0
        with source, open(dest, "wb") as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if written > m.size:  # more data than the header said: refuse rather than fill the disk
                    raise UserError(f"{archive}: member {'/'.join(m.parts)} holds more data than its header says. "
                                    "The archive is corrupt or hostile; delete it.")
                out.write(chunk)
                if progress is not None:
                    progress.advance(task, len(chunk))
        if m.mtime is not None:
            os.utime(dest, (m.mtime, m.mtime))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{archive} is corrupt at {'/'.join(m.parts)} ({type(e).__name__}: {e}). Delete it and "
                        "download it again.") from None
    except OSError as e:
        raise UserError(f"cannot extract {'/'.join(m.parts)} from {archive.name} into {staging.parent}: "
                        f"{e.strerror or e}.") from None


def _merge(staging: Path, target: Path) -> list[Path]:
    """Move the staged tree into `target`, merging into existing folders (never through symbolic links)."""
    moved = []
    for child in sorted(staging.iterdir()):
        dest = target / child.name
        if dest.is_symlink():
            raise UserError(f"{dest} is a symbolic link; refusing to extract through it. Remove it or download "
                            "into another folder.")
        if child.is_dir() and dest.is_dir():
            _merge(child, dest)
        elif dest.is_dir():
            raise UserError(f"{dest} is a folder but the archive holds a file there. Move it away and run again.")
        else:
            os.replace(child, dest)
        moved.append(dest)
    return moved


def _load_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and isinstance(state.get("files", {}), dict) else {}


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
