"""`prepare-data FORMAT DIR --download` against a local HTTP server (no network): resume, checksums, safe extraction."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import scipy.io
from PIL import Image
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.data import sources
from fgcli.data.download import STATE_FILE, ExtractLimits, download_dataset, extract_archive, plan_files
from fgcli.data.manifest import load_prepared
from fgcli.data.sources import SOURCES, RemoteFile, Source
from fgcli.errors import UserError

runner = CliRunner()


# ---------------------------------------------------------------- a local HTTP server with Range support
@dataclass
class _State:
    files: dict[str, bytes] = field(default_factory=dict)
    cuts: dict[str, list[int]] = field(default_factory=dict)  # path -> byte offsets at which to drop, once each
    no_range: set[str] = field(default_factory=set)  # paths served whole even when a Range is asked for
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: _State = self.server.state  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        asked = self.headers.get("Range")
        state.requests.append((path, asked))
        data = state.files.get(path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if asked and path not in state.no_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cuts = state.cuts.get(path)
        if cuts:  # promise the whole body, send part of it, hang up
            cut = cuts.pop(0)
            self.wfile.write(data[start:max(start, cut)])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Server:
    state: _State
    base: str

    def serve(self, name: str, data: bytes) -> str:
        self.state.files[f"/{name}"] = data
        return f"{self.base}/{name}"

    def ranges(self, name: str) -> list[str | None]:
        return [r for p, r in self.state.requests if p == f"/{name}"]


@pytest.fixture()
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}")  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------- archives and a tiny Flowers-102
def _tar(members: dict[str, bytes], mode: str = "w:gz", extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buf.getvalue()


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((18, 20, 3), value % 256, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _mat(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    scipy.io.savemat(buf, arrays)
    return buf.getvalue()


def flowers_files() -> dict[str, bytes]:
    """A 204-image Flowers-102 with the official file names: 102flowers.tgz (jpg/), imagelabels.mat, setid.mat."""
    labels = [(k % 102) + 1 for k in range(204)]
    images = {f"jpg/image_{n:05d}.jpg": _jpeg(n) for n in range(1, 205)}
    return {"102flowers.tgz": _tar(images),
            "imagelabels.mat": _mat(labels=np.array([labels], dtype=np.uint8)),
            "setid.mat": _mat(trnid=np.arange(1, 103)[None], valid=np.arange(103, 154)[None],
                              tstid=np.arange(154, 205)[None])}


def _source(fmt: str, server: Server, files: dict[str, bytes], *, md5: dict[str, str] | None = None,
            archives: tuple[str, ...] = ("102flowers.tgz",)) -> Source:
    """A registry entry for files on the test server, with their true checksums (or `md5` overrides)."""
    remote = tuple(RemoteFile(name, server.serve(name, data), md5=(md5 or {}).get(name, hashlib.md5(data).hexdigest()),
                              sha256=None if md5 and name in md5 else hashlib.sha256(data).hexdigest(),
                              archive=name in archives) for name, data in files.items())
    return Source(fmt, server.base, remote)


@pytest.fixture()
def flowers(server: Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    files = flowers_files()
    monkeypatch.setitem(SOURCES, "flowers102", _source("flowers102", server, files))
    return files


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().splitlines()[-1] == errors[0], result.stderr
    assert "Traceback" not in result.output
    return errors[0]


# ---------------------------------------------------------------- end to end
def test_prepare_data_download_flowers102(server: Server, flowers: dict[str, bytes], tmp_path: Path) -> None:
    target = tmp_path / "flowers102"
    result = runner.invoke(app, ["prepare-data", "flowers102", str(target), "--download", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (target / "jpg" / "image_00204.jpg").is_file() and (target / "setid.mat").is_file()
    assert not (target / "102flowers.tgz").exists() and not list(target.glob("*.part"))
    assert not list(target.glob(".fgcli-extract-*"))
    assert (target / "imagelabels.mat").read_bytes() == flowers["imagelabels.mat"]
    ds = load_prepared(tmp_path / "flowers102_fgcli")
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [102, 51, 51]
    state = json.loads((target / STATE_FILE).read_text())
    assert sorted(state["files"]) == sorted(flowers) and all(f["done"] for f in state["files"].values())
    asked = len(server.state.requests)
    again = runner.invoke(app, ["prepare-data", "flowers102", str(target), "--download", "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert len(server.state.requests) == asked  # nothing fetched twice


def test_dropped_connection_is_resumed_with_a_range_request(server: Server, flowers: dict[str, bytes],
                                                            tmp_path: Path) -> None:
    size = len(flowers["102flowers.tgz"])
    server.state.cuts["/102flowers.tgz"] = [size // 2]
    download_dataset("flowers102", tmp_path / "f")
    assert server.ranges("102flowers.tgz") == [None, f"bytes={size // 2}-"]
    assert len(list((tmp_path / "f" / "jpg").iterdir())) == 204


def test_dropped_connection_resumes_on_the_next_run(server: Server, flowers: dict[str, bytes],
                                                    tmp_path: Path) -> None:
    data = flowers["102flowers.tgz"]
    server.state.cuts["/102flowers.tgz"] = [len(data) // 3]
    with pytest.raises(UserError, match=r"stopped at .*Run the same command again to resume from 102flowers.tgz.part"):
        download_dataset("flowers102", tmp_path / "f", attempts=1)
    part = tmp_path / "f" / "102flowers.tgz.part"
    assert part.read_bytes() == data[: len(data) // 3]  # kept for the next run
    download_dataset("flowers102", tmp_path / "f", attempts=1)
    assert server.ranges("102flowers.tgz")[-1] == f"bytes={len(data) // 3}-"
    assert not part.exists() and (tmp_path / "f" / "jpg" / "image_00001.jpg").is_file()


def test_server_without_range_support_restarts_the_file(server: Server, flowers: dict[str, bytes],
                                                        tmp_path: Path) -> None:
    size = len(flowers["102flowers.tgz"])
    server.state.cuts["/102flowers.tgz"] = [size // 2]
    server.state.no_range.add("/102flowers.tgz")
    download_dataset("flowers102", tmp_path / "f")
    assert len(server.ranges("102flowers.tgz")) == 2
    assert len(list((tmp_path / "f" / "jpg").iterdir())) == 204


def test_truncated_file_fails_the_checksum_and_is_deleted(server: Server, flowers: dict[str, bytes],
                                                          tmp_path: Path) -> None:
    data = flowers["102flowers.tgz"]
    server.state.files["/102flowers.tgz"] = data[: len(data) - 100]  # a mirror with a cut-off copy
    target = tmp_path / "f"
    with pytest.raises(UserError) as err:
        download_dataset("flowers102", target)
    message = str(err.value)
    assert f"checksum mismatch for {server.base}/102flowers.tgz" in message
    assert hashlib.md5(data).hexdigest() in message and hashlib.md5(data[:-100]).hexdigest() in message
    assert not (target / "102flowers.tgz.part").exists() and not (target / "102flowers.tgz").exists()


def test_wrong_checksum_is_one_error_line(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = flowers_files()
    monkeypatch.setitem(SOURCES, "flowers102", _source("flowers102", server, files,
                                                       md5={"imagelabels.mat": "0" * 32}))
    result = runner.invoke(app, ["prepare-data", "flowers102", str(tmp_path / "f"), "--download"])
    line = _one_error_line(result)
    got = hashlib.md5(files["imagelabels.mat"]).hexdigest()
    assert line == (f"Error: checksum mismatch for {server.base}/imagelabels.mat: expected md5 {'0' * 32}, got "
                    f"{got}. The download was deleted; run the command again to retry, or pass --url with another "
                    "mirror.")
    assert not (tmp_path / "f" / "imagelabels.mat.part").exists()


def test_http_404_is_one_error_line(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = RemoteFile("CUB_200_2011.tgz", f"{server.base}/x.tgz", md5="0" * 32)
    monkeypatch.setitem(SOURCES, "cub", Source("cub", server.base, (missing,)))
    line = _one_error_line(runner.invoke(app, ["prepare-data", "cub", str(tmp_path / "c"), "--download"]))
    assert f"download of {server.base}/x.tgz failed: HTTP 404" in line


def test_url_override_with_own_checksum(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A single-file data set from a mirror under another name, checked against --sha256."""
    archive = _tar({"CUB_200_2011/README": b"hello"})
    url = server.serve("mirror/cub.tar.gz", archive) + "?dl=1"
    official = RemoteFile("CUB_200_2011.tgz", "http://nowhere.invalid/a.tgz", md5="0" * 32)
    monkeypatch.setitem(SOURCES, "cub", Source("cub", "x", (official,)))
    download_dataset("cub", tmp_path / "c", urls=[url], sha256=hashlib.sha256(archive).hexdigest())
    assert (tmp_path / "c" / "CUB_200_2011" / "README").read_bytes() == b"hello"
    with pytest.raises(UserError, match="checksum mismatch .* expected md5 0{32}"):  # the registry's sum applies
        download_dataset("cub", tmp_path / "d", urls=[url])


def test_plan_files_url_rules() -> None:
    flowers = SOURCES["flowers102"]
    planned = {f.name: f for f in plan_files(flowers, ["https://mirror.example/f/"], None, None)}
    assert planned["setid.mat"].url == "https://mirror.example/f/setid.mat"
    assert planned["setid.mat"].md5 == "a5357ecc9cb78c4bef273ce3793fc85c"  # published sums still apply
    one = {f.name: f for f in plan_files(flowers, ["https://m.example/x/setid.mat"], None, "a" * 64)}
    assert one["setid.mat"].sha256 == "a" * 64 and one["setid.mat"].md5 is None
    assert one["102flowers.tgz"].url == flowers.files[0].url
    with pytest.raises(UserError, match="file name 'other.tgz' is none of the flowers102 files"):
        plan_files(flowers, ["https://m.example/other.tgz"], None, None)
    with pytest.raises(UserError, match="--md5 applies to the one file given with --url"):
        plan_files(flowers, [], "a" * 32, None)
    with pytest.raises(UserError, match="--md5 must be 32 hexadecimal digits"):
        plan_files(SOURCES["cub"], [], "xyz", None)
    with pytest.raises(UserError, match="only http://, https://, file:// URLs"):
        plan_files(SOURCES["cub"], ["ftp://x/CUB_200_2011.tgz"], None, None)
    with pytest.raises(UserError, match="NABirds has no public download URL"):
        plan_files(SOURCES["nabirds"], [], None, None)
    nabirds = plan_files(SOURCES["nabirds"], ["https://example.org/get?id=1"], None, None)
    assert nabirds[0].url == "https://example.org/get?id=1" and nabirds[0].md5 == "df21a9e4db349a14e2b08adfd45873bd"


@pytest.mark.parametrize("args, message", [
    (["imagefolder", "{tmp}/x", "--download"], "--download has no source for the imagefolder format"),
    (["cub", "{tmp}/x", "--url", "https://m.example/CUB_200_2011.tgz"], "--url, --md5 and --sha256 only apply"),
    (["nabirds", "{tmp}/x", "--download"], "NABirds has no public download URL"),
])
def test_download_flag_errors(tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert message in _one_error_line(runner.invoke(app, ["prepare-data", *args]))


def test_registry_has_urls_and_well_formed_checksums() -> None:
    for fmt, source in SOURCES.items():
        assert source.format == fmt and source.files
        for f in source.files:
            assert f.md5 or f.sha256, f"{fmt}/{f.name} has no checksum"
            assert f.md5 is None or re.fullmatch(r"[0-9a-f]{32}", f.md5)
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            assert f.url is None or (f.url.startswith(("http://", "https://")) and f.url.endswith(f.name))
            assert f.url is not None or source.note
    assert set(SOURCES) <= set(sources.SOURCES) and "flowers102" in SOURCES


# ---------------------------------------------------------------- safe extraction
def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in entries:
            z.writestr(info, data)
    return buf.getvalue()


def _zip_symlink() -> bytes:
    info = zipfile.ZipInfo("data/link")
    info.external_attr = (0o120777 << 16)
    return _zip([("data/ok.txt", b"ok"), (info, b"/etc/passwd")])


UNSAFE = {
    "dotdot": (lambda: _tar({"data/ok.txt": b"ok", "../evil.txt": b"x"}), "points outside the target folder"),
    "nested dotdot": (lambda: _tar({"data/../../evil.txt": b"x"}), "points outside the target folder"),
    "absolute": (lambda: _tar({"/tmp/evil.txt": b"x"}), "has an absolute path"),
    "symlink": (lambda: _tar({"data/ok.txt": b"ok"}, extra=[_link("data/link", "/etc/passwd", tarfile.SYMTYPE)]),
                "is a symbolic link to '/etc/passwd'"),
    "hardlink": (lambda: _tar({"data/ok.txt": b"ok"}, extra=[_link("data/h", "data/ok.txt", tarfile.LNKTYPE)]),
                 "is a hard link"),
    "char device": (lambda: _tar({}, extra=[_device("data/null", tarfile.CHRTYPE)]), "is a device file or FIFO"),
    "fifo": (lambda: _tar({}, extra=[_device("data/pipe", tarfile.FIFOTYPE)]), "is a device file or FIFO"),
    "zip dotdot": (lambda: _zip([("data/ok.txt", b"ok"), ("../evil.txt", b"x")]), "points outside the target"),
    "zip symlink": (_zip_symlink, "is a symbolic link"),
    "bomb": (lambda: _tar({"data/zeros.bin": bytes(2_000_000)}), "a compression bomb"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_archive_is_refused_whole(tmp_path: Path, case: str) -> None:
    make, message = UNSAFE[case]
    target = tmp_path / "sub" / "target"
    target.mkdir(parents=True)
    archive = target / "a.tgz"
    archive.write_bytes(make())
    with pytest.raises(UserError, match=f"refusing to extract a.tgz: .*{re.escape(message)}"):
        extract_archive(archive, target)
    assert sorted(p.name for p in target.iterdir()) == []  # nothing extracted, archive deleted, no staging
    assert not (tmp_path / "sub" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_size_limit(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar({"a.bin": bytes(3000), "b.bin": bytes(3000)}, mode="w"))
    with pytest.raises(UserError, match="expands to more than 5.0 KB"):
        extract_archive(archive, tmp_path, ExtractLimits(max_bytes=5000))
    archive.write_bytes(_tar({"a.bin": bytes(3000), "b.bin": bytes(3000)}, mode="w"))
    with pytest.raises(UserError, match="more than 1 members"):
        extract_archive(archive, tmp_path, ExtractLimits(max_members=1))


def test_safe_archive_merges_into_existing_folders(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep")
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip([("./data/new.txt", b"new"), ("data/sub/deep.txt", b"deep"), ("top.txt", b"t")]))
    extract_archive(archive, tmp_path)
    assert (tmp_path / "data" / "mine.txt").read_text() == "keep"
    assert (tmp_path / "data" / "sub" / "deep.txt").read_bytes() == b"deep" and (tmp_path / "top.txt").is_file()


def test_cli_refuses_a_symlink_archive(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = _tar({"CUB_200_2011/ok.txt": b"ok"}, extra=[_link("CUB_200_2011/x", "/etc", tarfile.SYMTYPE)])
    monkeypatch.setitem(SOURCES, "cub", _source("cub", server, {"CUB_200_2011.tgz": data},
                                                archives=("CUB_200_2011.tgz",)))
    line = _one_error_line(runner.invoke(app, ["prepare-data", "cub", str(tmp_path / "c"), "--download"]))
    assert "refusing to extract CUB_200_2011.tgz: member 'CUB_200_2011/x' is a symbolic link" in line
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == []


def test_file_already_in_the_folder_is_checked_not_downloaded(server: Server, flowers: dict[str, bytes],
                                                              tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.mkdir()
    (target / "setid.mat").write_bytes(flowers["setid.mat"])  # fetched by hand: right bytes
    (target / "imagelabels.mat").write_bytes(b"something else")  # wrong bytes
    with pytest.raises(UserError, match=r"checksum mismatch for .*imagelabels.mat \(already in the folder\): "
                                        r"expected md5 [0-9a-f]{32}, got [0-9a-f]{32}\. The file was deleted"):
        download_dataset("flowers102", target)
    assert not (target / "imagelabels.mat").exists()
    download_dataset("flowers102", target)
    assert server.ranges("setid.mat") == [] and len(server.ranges("imagelabels.mat")) == 1


def test_ctrl_c_keeps_the_partial_file_for_the_next_run(server: Server, flowers: dict[str, bytes],
                                                        tmp_path: Path) -> None:
    import fgcli.data.download as download

    real_open = open
    writes = []

    class Interrupting:
        """A .part file whose third write is interrupted by Ctrl-C."""

        def __init__(self, handle: io.BufferedWriter) -> None:
            self.handle = handle

        def __enter__(self) -> Interrupting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, chunk: bytes) -> int:
            writes.append(len(chunk))
            if len(writes) == 3:
                raise KeyboardInterrupt
            return self.handle.write(chunk)

    def fake_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return Interrupting(handle) if str(path).endswith(".tgz.part") and mode in ("ab", "wb") else handle

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(download, "CHUNK", 256)
        patch.setattr(download, "open", fake_open, raising=False)
        with pytest.raises(KeyboardInterrupt):
            download_dataset("flowers102", tmp_path / "f")
    part = tmp_path / "f" / "102flowers.tgz.part"
    assert part.stat().st_size == 2 * 256 < len(flowers["102flowers.tgz"])
    assert not list((tmp_path / "f").glob(".fgcli-extract-*"))
    download_dataset("flowers102", tmp_path / "f")
    assert server.ranges("102flowers.tgz")[-1] == f"bytes={2 * 256}-" and not part.exists()
    assert len(list((tmp_path / "f" / "jpg").iterdir())) == 204
