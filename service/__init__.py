"""The HTTP service: request validation, image preprocessing and batched onnxruntime inference."""
