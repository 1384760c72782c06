"""Fake providers: small Flask apps speaking the providers' real HTTP APIs (docs/design.md §7).

Run one with `python -m fakes.ark --port P` or `python -m fakes.nanobanana --port P`.
"""
