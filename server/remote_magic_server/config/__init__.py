"""The server's configuration, in one place: the TOML file's tables (settings.py), its data sources
(sources.py) and the automation's tables (automation_sections.py)."""
