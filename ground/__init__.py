"""The ground floor: settings, the API error type, log-safe quoting, connections.

Imports nothing of the project; every other module may import from here (the layers
are in pyproject.toml's [tool.importlinter] and DESIGN's card)."""
