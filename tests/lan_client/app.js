// A minimal application client with the contract of OpenVidu's tutorial clients, for the
// LAN tests: both URLs left empty, so they follow from the page's host as in OpenVidu's
// local deployment (6443 for the application server, 7443 for LiveKit), or the
// development ports when the page is on localhost.
var APPLICATION_SERVER_URL = "";
var LIVEKIT_URL = "";
var room = null; // the livekit-client Room while joined (the tests reach it as `room`)

if (!APPLICATION_SERVER_URL) {
  APPLICATION_SERVER_URL =
    location.hostname === "localhost" ? "http://localhost:6080/" : `https://${location.hostname}:6443/`;
}
if (!LIVEKIT_URL) {
  LIVEKIT_URL = location.hostname === "localhost" ? "ws://localhost:7880/" : `wss://${location.hostname}:7443/`;
}

const { Room, RoomEvent, Track } = window.LivekitClient;
const byId = (id) => document.getElementById(id);

async function fetchToken(roomName, participantName) {
  const response = await fetch(APPLICATION_SERVER_URL + "token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ roomName, participantName }),
  });
  if (!response.ok) {
    const answer = await response.json();
    throw new Error(answer.errorMessage);
  }
  return (await response.json()).token;
}

function tile(identity) {
  let element = byId(`camera-${identity}`);
  if (!element) {
    element = document.createElement("div");
    element.id = `camera-${identity}`;
    element.append(Object.assign(document.createElement("p"), { textContent: identity }));
    byId("tiles").append(element);
  }
  return element;
}

function show(track, identity) {
  const element = track.attach();
  if (track.kind === Track.Kind.Video) element.muted = true;
  tile(identity).append(element);
}

async function join(event) {
  event.preventDefault();
  const error = byId("error");
  error.hidden = true;
  byId("join-button").disabled = true;
  const roomName = byId("room-name").value;
  room = new Room();
  room.on(RoomEvent.TrackSubscribed, (track, _publication, participant) => show(track, participant.identity));
  room.on(RoomEvent.TrackUnsubscribed, (track) => track.detach().forEach((element) => element.remove()));
  room.on(RoomEvent.ParticipantDisconnected, (participant) => tile(participant.identity).remove());
  try {
    const token = await fetchToken(roomName, byId("participant-name").value);
    await room.connect(LIVEKIT_URL, token);
    byId("room-title").textContent = roomName;
    byId("join").hidden = true;
    byId("room").hidden = false;
    await room.localParticipant.enableCameraAndMicrophone();
    const camera = room.localParticipant.getTrackPublication(Track.Source.Camera);
    if (camera && camera.videoTrack) show(camera.videoTrack, room.localParticipant.identity);
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
    await leave();
  }
}

async function leave() {
  if (room) await room.disconnect();
  room = null;
  byId("tiles").replaceChildren();
  byId("room").hidden = true;
  byId("join").hidden = false;
  byId("join-button").disabled = false;
}

byId("join").addEventListener("submit", join);
byId("leave-button").addEventListener("click", leave);
byId("room-name").value = "Test Room";
byId("participant-name").value = `Participant${Math.floor(Math.random() * 100)}`;
