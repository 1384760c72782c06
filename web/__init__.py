"""Everything only the web process imports: connections, the task store, its HTTP APIs, the dashboard, the CLI.

The processor and the worker never import this package (tests/test_imports.py
checks): they reach the database over HTTP, through web/internal_api.py.
"""
