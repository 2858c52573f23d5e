"""Your own endpoint: GET /example/rooms lists LiveKit's live rooms, through the shared client.

    APP_EXTENSIONS=examples.room_list

The handler is a plain Tornado RequestHandler: the server tracks it for a graceful
shutdown and answers its errors in JSON, whatever base class it has. It gets the app's
config, event log and LiveKit API client (LiveKitAPI at LIVEKIT_API_URL, created once at
start-up and closed at shutdown) through `initialize`.
"""

from __future__ import annotations

import aiohttp
import tornado.web
from livekit.api import ListRoomsRequest, TwirpError

from extensions import ApiError, AppContext, Route


class RoomListHandler(tornado.web.RequestHandler):
    def initialize(self, app: AppContext) -> None:
        self.app = app

    async def get(self) -> None:
        try:
            listed = await self.app.livekit_api.room.list_rooms(ListRoomsRequest())
        except (aiohttp.ClientError, TimeoutError, TwirpError) as error:
            raise ApiError(503, f"LiveKit cannot be reached at {self.app.config.livekit_http_url}") from error
        rooms = [{"name": room.name, "numParticipants": room.num_participants} for room in listed.rooms]
        self.write({"rooms": sorted(rooms, key=lambda room: str(room["name"]))})


def routes(app: AppContext) -> list[Route]:
    return [(r"/example/rooms", RoomListHandler, {"app": app})]
