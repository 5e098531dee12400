"""ONNX export of the fused model: graph export (`onnx_export`), metadata, parity checks (`verify`), fp16
(`fp16`), int8 (`quantize`), and the `fgcli export` pipeline (`pipeline.export_checkpoint`)."""
