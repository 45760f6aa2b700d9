"""Implementations behind the Triton python-backend models in `../model_repository/`.

The `model.py` files there only fix `sys.path` and import `TritonPythonModel` from here, so the
code is written once, importable and unit-testable outside Triton.
"""
