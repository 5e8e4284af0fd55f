"""The contract: what the notebook side and the server both import.

The wire schemas (`wire`, `automation_wire`), the error codes, the filter and derive grammar and its type
checks, spec resolution, the staging query, the payload rules, webhook signing. Pure: no I/O, no client,
no server code, and importing it loads no model library.
"""
