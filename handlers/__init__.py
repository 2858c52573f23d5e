"""The HTTP layer: one module per endpoint family (token, webhook, events, pages, rooms,
metrics, openapi), each exporting its routes(); what they share is in handlers/support/."""
