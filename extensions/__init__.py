"""Make it yours: your code in your own modules, named by APP_EXTENSIONS.

`APP_EXTENSIONS=mypkg.hooks,other.module` imports each module once at start-up (installed,
on PYTHONPATH, or in the working directory). A module may define any of these names; all
are optional, sync or async (`async def`) as you like, and typed with what this package
exports:

    def authorize(request: TokenRequest, grant: Grant) -> Grant
        Decide about one token request (both request shapes arrive as the same
        TokenRequest, with the HTTP headers and cookies). Return the grant to mint,
        changed or not (identity, name, metadata, attributes, permissions in
        `grant.video`, ttl), or `raise Refuse(401 or 403, "message")`. The built-in rules
        (handlers/support/token_rules.py: TOKEN_AUTH_SECRET, TOKEN_CLIENT_FIELDS,
        TOKEN_ROOM_CONFIG_FIELDS, ROOM_NAME_PATTERN, NAME_MAX_LENGTH, generated names)
        run first; then every module's authorize, in APP_EXTENSIONS order, each given the
        previous one's grant.

    def on_<event>(event: WebhookEvent, context: EventContext) -> None
    def on_event(event: WebhookEvent, context: EventContext) -> None
        Called for each stored webhook event of that name (on_room_finished,
        on_participant_joined...) or for every event (on_event), after LiveKit got its
        200, at least once: raise to have it retried with backoff; after
        EVENT_HANDLER_MAX_ATTEMPTS the event is parked (`python -m extensions` lists and
        retries parked events). Plain functions run on a thread of their own; coroutines
        on the event loop, so they must await rather than block.

    def routes(app: AppContext) -> list[Route]
        Extra Tornado routes, `(pattern, HandlerClass[, initialize kwargs])`, any
        RequestHandler subclass: pass `app` (config, event log, the shared LiveKitAPI) to
        your handlers through the kwargs. Shutdown waits for them like for the built-in
        endpoints; errors are `{"errorMessage"}` JSON unless your class writes its own.

    def setup(app: AppContext) -> None
        Called once at start-up, before the server listens: check your settings here
        (`app.config.setting("MY_SETTING")`); raise ExtensionError("what to set") to stop
        the start with that one line.
"""

from livekit.api import VideoGrants, WebhookEvent

from extensions.app import AppContext
from extensions.authorize import Authorize, Grant, Refuse, TokenRequest
from extensions.events import EventContext, EventHandler
from extensions.loader import ExtensionError, Extensions, load_extensions
from extensions.routes import Route, RoutesFactory
from ground.errors import ApiError

__all__ = [
    "ApiError",
    "AppContext",
    "Authorize",
    "EventContext",
    "EventHandler",
    "ExtensionError",
    "Extensions",
    "Grant",
    "Refuse",
    "Route",
    "RoutesFactory",
    "TokenRequest",
    "VideoGrants",
    "WebhookEvent",
    "load_extensions",
]
