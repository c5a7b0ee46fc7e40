"""Exports of a trained model: SavedModel, TFLite, ONNX."""
