"""Payload schemas (``payload_schema``): bounded at write time, evaluated in bounded time at trigger time.

- ``patterns``: ``pattern`` and ``patternProperties`` run on RE2 (linear time), never on Python's
  backtracking ``re``.
- ``bounds``: what a schema may be when it is written (size, fan-out through ``$ref``, patterns).
- ``evaluation``: the validator (JSON Schema 2020-12 with those patterns, ``uniqueItems`` in linear time and
  a time budget per payload) and its cache, bounded by bytes.
"""
