"""What the endpoint modules of handlers/ share: the handler base, bounded bodies, origin
and admin access rules, the event sockets' broadcaster, rate limits, the token rules,
the metrics registry and the observation hooks that feed it, the one Application
builder, and LiveKit's failures as HTTP answers."""
