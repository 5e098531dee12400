"""Model formats: the torch checkpoint, ONNX and the writers / readers around them."""
