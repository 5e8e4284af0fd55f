"""The model registry: named, numbered versions of trained models with their lineage and aliases."""
