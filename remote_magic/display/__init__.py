"""What a notebook shows: results, descriptions, tables, plots, progress, comparisons, lineage.

Display objects with two faces (`_repr_html_` and a deterministic `__repr__`); they read the contract's
wire models only and never call the server.
"""
