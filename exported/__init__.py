"""The shipped ONNX model and its model card (data files; see MODEL_CARD.md)."""
