"""The format registry (fgcli.formats): which format a file is, the one-line refusals (a missing companion file,
a runtime that is not installed, an option or a variant a format does not have), and its one tolerance table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from exportkit import make_checkpoint_file, write_images
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.errors import UserError
from fgcli.formats import (
    check_options,
    families,
    format_of,
    get_format,
    list_formats,
    load_predictor,
    resolve,
    stem,
    writable_help,
)
from fgcli.options import ExportOptions, LoadOptions
from fgcli.parity import TOLERANCES
from fgcli.tasks.export_model import plan_formats

runner = CliRunner()


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def test_the_builtin_formats_and_their_tolerances() -> None:
    names = [f.name for f in list_formats()]
    assert names[:4] == ["torch", "onnx", "onnx-fp16", "onnx-int8"] and "openvino" in names
    assert families()[:2] == ["torch", "onnx"]
    for fmt in list_formats():
        assert fmt.suffixes and fmt.suffix.startswith(".") and fmt.runtime
        assert fmt.tolerance == TOLERANCES[fmt.precision]  # one table, by the precision the file stores
    assert get_format("onnx").tolerance.max_dprob == 1e-4 and get_format("onnx-int8").tolerance.min_agreement == 0.95
    assert [f.name for f in list_formats() if f.heads] == ["torch"]  # per-head scores and attention maps
    with pytest.raises(UserError, match="unknown format 'tvm'"):
        get_format("tvm")


def test_a_file_is_known_by_its_longest_suffix(tmp_path: Path) -> None:
    cases = {"best.pt": "torch", "last.pth": "torch", "weights.ckpt": "torch",  # any other name: a checkpoint
             "best.onnx": "onnx", "best.fp16.onnx": "onnx-fp16", "BEST.INT8.ONNX": "onnx-int8",
             "best.xml": "openvino", "best.bin": "openvino"}
    assert {name: format_of(tmp_path / name).name for name in cases} == cases
    assert [stem(Path(n)) for n in ("best.int8.onnx", "net.xml", "run.pt", "a.b.onnx")] == ["best", "net", "run",
                                                                                              "a.b"]
    assert get_format("onnx-int8").path_for(tmp_path / "best.pt") == tmp_path / "best.int8.onnx"


def test_an_ir_needs_both_of_its_files(tmp_path: Path) -> None:
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    xml.write_text("<net/>")
    with pytest.raises(UserError, match=r"m.xml is an OpenVINO IR model, but its .bin file \(m.bin\) is missing"):
        resolve(xml)
    xml.unlink()
    bin_.write_bytes(b"\0")
    with pytest.raises(UserError, match=r"m.bin is the .bin part of an OpenVINO IR model, but its m.xml is missing"):
        resolve(bin_)
    xml.write_text("<net/>")
    assert resolve(bin_) == (get_format("openvino"), xml)  # the pair, named by either file
    with pytest.raises(UserError, match="model file .*nope.onnx does not exist"):
        resolve(tmp_path / "nope.onnx")
    result = runner.invoke(app, ["predict", str(tmp_path / "lonely.xml"), str(tmp_path)])
    assert result.exit_code == 1 and len(_errors(result.output)) == 1


def test_a_format_whose_runtime_is_missing_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the openvino package were not installed
    (tmp_path / "m.xml").write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"\0")
    assert 'pip install "fgcli[openvino]"' in get_format("openvino").missing_runtime()
    with pytest.raises(UserError, match=r'm.xml: the OpenVINO IR format needs OpenVINO, which is not installed here: '
                                        r'pip install "fgcli\[openvino\]"'):
        load_predictor(tmp_path / "m.xml")
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    image = write_images(tmp_path / "images", 1)[0]
    for args in (["predict", str(tmp_path / "m.xml"), str(image)], ["export", str(ckpt), "--format", "openvino"]):
        result = runner.invoke(app, args)
        errors = _errors(result.output)
        assert result.exit_code == 1 and len(errors) == 1 and 'pip install "fgcli[openvino]"' in errors[0], args
    assert not (tmp_path / "model.xml").exists()


def test_options_a_format_cannot_honour_are_one_line() -> None:
    torch_fmt, ir = get_format("torch"), get_format("openvino")
    with pytest.raises(UserError, match="--providers applies to .onnx models only; for a checkpoint use --device"):
        check_options(torch_fmt, LoadOptions(providers=["cpu"]))
    with pytest.raises(UserError, match="--providers applies to .onnx models only; an OpenVINO IR model runs on "
                                        "OpenVINO"):
        check_options(ir, LoadOptions(providers="openvino"))
    with pytest.raises(UserError, match="--precision bf16 is OpenVINO's inference precision: it applies to .onnx and "
                                        ".xml models .*; a checkpoint runs in fp32 on torch"):
        check_options(torch_fmt, LoadOptions(precision="bf16"))
    with pytest.raises(UserError, match="--device cuda: an OpenVINO IR model runs on OpenVINO on the CPU"):
        check_options(ir, LoadOptions(device="cuda"))
    check_options(ir, LoadOptions(precision="bf16", device="cpu"))
    check_options(get_format("onnx"), LoadOptions(providers=["openvino"], precision="bf16"))


def test_export_plans_the_formats_asked_and_refuses_what_they_cannot_hold() -> None:
    def names(**kwargs) -> list[str]:
        return [f.name for f in plan_formats(ExportOptions(**kwargs))]

    assert names() == ["onnx"] and names(format="openvino,onnx", int8=True) == ["openvino", "onnx", "onnx-int8"]
    assert names(format=["onnx"], fp16=True, int8=True) == ["onnx", "onnx-fp16", "onnx-int8"]
    assert names(format="onnx-int8") == ["onnx-int8"]
    cases = {(("openvino",), "int8"): "--int8: the OpenVINO IR format holds no int8 variant; int8 is in the onnx "
                                      "format (--format onnx --int8)",
             (("openvino",), "fp16"): "--fp16: the OpenVINO IR format holds no fp16 variant",
             (("torch",), ""): "--format torch: the fgcli checkpoint is what `fgcli export` starts from",
             (("onx",), ""): "--format onx: unknown format. Did you mean 'onnx'?",
             ((), ""): "choose an export format: --format onnx | openvino"}
    for (formats, flag), message in cases.items():
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            plan_formats(ExportOptions(format=list(formats), **({flag: True} if flag else {})))
    assert "onnx (ONNX fp32, .onnx; --fp16 / --int8 add its variants)" in writable_help()
    assert 'openvino (OpenVINO IR, .xml + .bin; pip install "fgcli[openvino]")' in writable_help()


@pytest.mark.parametrize("command", ["export", "eval", "predict"])
def test_help_shows_the_openvino_extra_with_its_brackets(command: str) -> None:
    """--help goes through rich markup, which would eat an unescaped "[openvino]"."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0 and 'pip install "fgcli[openvino]"' in result.output


def test_exported_files_refuse_what_only_a_checkpoint_has(tmp_path: Path) -> None:
    for name in ("m.onnx", "m.xml"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "m.bin").write_bytes(b"x")
    for args, message in ((["attention-viz", str(tmp_path / "m.xml")], "holds only the fused logits, no attention"),
                          (["calibrate", str(tmp_path / "m.onnx")], "calibrate the .pt checkpoint it was exported"),
                          (["export", str(tmp_path / "m.xml"), "--onnx"], "takes the training checkpoint (.pt)")):
        result = runner.invoke(app, args)
        errors = _errors(result.output)
        assert result.exit_code == 1 and len(errors) == 1 and message in errors[0], result.output
