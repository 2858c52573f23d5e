"""Print the Authorization header livekit-server would send with this webhook body.

    .venv/bin/python -m dev.sign_webhook '{"event":"room_started","id":"EV_1"}'

Uses LIVEKIT_API_KEY / LIVEKIT_API_SECRET from the environment or `.env`, like the server.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import warnings
from datetime import timedelta

import jwt
from livekit.api import AccessToken

from ground.config import Config


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)
    config = Config.from_env()
    digest = base64.b64encode(hashlib.sha256(sys.argv[1].encode()).digest()).decode()
    token = AccessToken(config.livekit_api_key, config.livekit_api_secret).with_sha256(digest)
    print(token.with_ttl(timedelta(minutes=5)).to_jwt())


if __name__ == "__main__":
    main()
