"""The operators' console: pages, forms, the JSON API and their presentation. Reads
through the engine's selectors and writes through its services; `workflows/admin.py`
stays where Django's admin autodiscovery looks for it."""
