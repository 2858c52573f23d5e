// The peer a user would pick instead: a token endpoint written the way OpenVidu's
// Node tutorial server does it (Express, cors, express.json, livekit-server-sdk).
import cors from "cors";
import express from "express";
import { AccessToken } from "livekit-server-sdk";

const port = Number(process.env.SERVER_PORT);
const apiKey = process.env.LIVEKIT_API_KEY || "devkey";
const apiSecret = process.env.LIVEKIT_API_SECRET || "secret";

const app = express();
app.use(cors());
app.use(express.json());

app.post("/token", async (req, res) => {
  const { roomName, participantName } = req.body ?? {};
  if (!roomName || !participantName) {
    res.status(400).json({ errorMessage: "roomName and participantName are required" });
    return;
  }
  const token = new AccessToken(apiKey, apiSecret, { identity: participantName });
  token.addGrant({ roomJoin: true, room: roomName });
  res.json({ token: await token.toJwt() });
});

app.get("/healthz", (_req, res) => res.json({ status: "ok" }));

app.listen(port, "127.0.0.1");
