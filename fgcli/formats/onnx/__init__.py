"""The ONNX format: torch -> ONNX graph export (`torch_to_onnx`), fp16 (`fp16`), int8 (`quantize`) and the
graph helpers they share (`graph`)."""
