"""Exports: ONNX with Q/DQ and vendor files."""
