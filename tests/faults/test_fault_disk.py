"""2. Disk errors: a write that fails (disk full, quota, I/O error, a file size limit) leaves the previous
file intact, removes its temp file, and stops with one clear line (exit 1)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest
from exportkit import make_checkpoint_file
from faultkit import TRAIN, TRAIN_FAST, env, fgcli_cmd, state
from typer.testing import CliRunner

from fgcli import io
from fgcli.cli import app

runner = CliRunner()



class _FailingFile:
    """A file whose write (or fsync) fails like a full disk after part of the data went out."""

    def __init__(self, f, error: OSError, where: str) -> None:
        self.f, self.error, self.where = f, error, where

    def write(self, data):
        if self.where == "write":
            self.f.write(data[: len(data) // 3])
            raise self.error
        return self.f.write(data)

    def fileno(self):
        if self.where == "fsync":
            raise self.error
        return self.f.fileno()

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


class _BrokenDisk:
    """Stands in for the `os` module inside fgcli.io: the nth write of file `name` fails at `where`
    (write, fsync or replace) with `code`; everything else is the real os."""

    def __init__(self, name: str, nth: int, where: str, code: int) -> None:
        self.name, self.nth, self.where, self.code = name, nth, where, code
        self.count = 0
        self.failed = False

    def __getattr__(self, attr):
        return getattr(os, attr)

    def _error(self) -> OSError:
        self.failed = True
        return OSError(self.code, os.strerror(self.code))

    def _hit(self, fd: int) -> bool:
        if not Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{self.name}."):
            return False
        self.count += 1
        return self.count == self.nth

    def fdopen(self, fd, *args, **kwargs):
        f = os.fdopen(fd, *args, **kwargs)
        if self._hit(fd):
            if self.where == "replace":
                self.replace_armed = True
            else:
                return _FailingFile(f, self._error(), self.where)
        return f

    def replace(self, src, dst):
        if getattr(self, "replace_armed", False):
            self.replace_armed = False
            raise self._error()
        return os.replace(src, dst)


# (file, which write of it fails, where, errno, completed epochs that must survive in last.pt)
TRAIN_CASES = [
    ("last.pt", 3, "write", errno.ENOSPC, 1),  # epoch 2's last.pt (write 1 is the epoch-0 state)
    ("last.pt", 2, "replace", errno.EACCES, 0),
    ("best.pt", 1, "fsync", errno.EIO, 0),
    ("results.csv", 2, "write", errno.EDQUOT, 1),
]


@pytest.mark.parametrize("name, nth, where, code, kept", TRAIN_CASES)
def test_failing_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, faults, name, nth, where, code,
                                                         kept) -> None:
    with faults.inject("disk", f"{errno.errorcode[code]} at {where} of {name} during training"):
        disk = _BrokenDisk(name, nth, where, code)
        monkeypatch.setattr(io, "os", disk)
        result = runner.invoke(app, ["train", "--method", "baseline", *TRAIN_FAST, "--epochs", "3",
                                     "--project", str(tmp_path), "--name", "exp"])
        assert disk.failed and result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and f"could not write {tmp_path / 'exp'}" in errors[0], result.output
        assert os.strerror(code) in errors[0] and "is unchanged" in errors[0]
        last = state(tmp_path / "exp" / "weights" / "last.pt")
        assert last["epoch"] == kept
        assert not list((tmp_path / "exp").rglob(".*.tmp"))


def test_failing_onnx_write_keeps_the_previous_export(tmp_path, monkeypatch, faults) -> None:
    with faults.inject("disk", "ENOSPC while writing the .onnx file over an older export"):
        ckpt = make_checkpoint_file(tmp_path)
        out = tmp_path / "model.onnx"
        first = runner.invoke(app, ["export", str(ckpt), "--onnx", "--no-verify", "--out", str(out)])
        assert first.exit_code == 0, first.output
        before = out.read_bytes()
        monkeypatch.setattr(io, "os", _BrokenDisk(f".model.partial-{os.getpid()}.onnx", 1, "write", errno.ENOSPC))
        result = runner.invoke(app, ["export", str(ckpt), "--onnx", "--no-verify", "--out", str(out)])
        assert result.exit_code == 1 and "No space left on device" in result.output, result.output
        assert out.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt"]


@pytest.mark.slow
def test_real_file_size_limit_stops_training_and_keeps_last_pt(tmp_path, faults) -> None:
    """The kernel refuses the write (RLIMIT_FSIZE -> EFBIG), not a patched writer: the epoch-0 checkpoint fits
    under the limit, the epoch-1 one (which adds the optimizer's momentum) does not."""
    from fgcli.config import resolve_config
    from fgcli.methods import build_method

    cfg = resolve_config(overrides=["model.backbone=test_resnet"])
    weights = sum(t.numel() * t.element_size() for t in build_method(cfg, 2).state_dict().values())
    limit = int(2.5 * weights) + 200_000  # model + EMA (epoch 0) fit; + momentum (epoch 1) does not

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with faults.inject("disk", "file size limit (EFBIG from the kernel) on the epoch-1 checkpoint"):
        proc = subprocess.run(fgcli_cmd("train", *TRAIN, "--epochs", "2", "--project", str(tmp_path), "--name",
                                        "exp"), env=env(), capture_output=True, text=True, timeout=300,
                              preexec_fn=limit_files)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "could not write" in proc.stderr and "File too large" in proc.stderr, proc.stderr
        assert state(tmp_path / "exp" / "weights" / "last.pt")["epoch"] == 0
        assert not list((tmp_path / "exp").rglob(".*.tmp"))
