"""Serving: the Scorer (ranking library), the HTTP API with hot reload, ONNX export, the model registry, bench-serve.

Import the submodules directly (`widedeep.serve.scorer`, `.http`, `.registry`, `.onnx`, `.bench`); this package imports
nothing itself, so loading a model never pulls in the web framework.
"""
