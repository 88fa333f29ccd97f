"""The HTTP server: the FastAPI app, its edge checks and its routes.

Routes parse, authorize, call one service method and render. May import
``service``, ``core``, ``exceptions``; never ``store`` (contract in
pyproject.toml).
"""
