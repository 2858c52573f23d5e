"""The ground floor: settings, the API error type, bearer credentials, log-safe quoting
and redaction, connections, the supervisor of long-running tasks.

Imports nothing of the project; every other module may import from here (the layers
are in pyproject.toml's [tool.importlinter] and DESIGN's card)."""
