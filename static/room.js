// Joining a room: a token from /token, then livekit-client (served from this origin).
import { ConnectionError, DisconnectReason, Room, RoomEvent, Track } from "/vendor/livekit-client/livekit-client.esm.mjs";
import { hideInvite, roomFromUrl, showInvite } from "./invite.js";

const form = document.getElementById("join-form");
const joinButton = document.getElementById("join-button");
const errorBox = document.getElementById("room-error");
const inRoom = document.getElementById("in-room");
const tiles = document.getElementById("tiles");
const countLabel = document.getElementById("participant-count");
const roomTitle = document.getElementById("room-title");
const micButton = document.getElementById("toggle-mic");
const cameraButton = document.getElementById("toggle-camera");
const leaveButton = document.getElementById("leave-button");
const nameField = document.getElementById("participant-name");
const urlField = document.getElementById("livekit-url");

let room = null;

// Said on the page when LiveKit ends the session for a reason other than the Leave button.
const DISCONNECTED_BECAUSE = {
  [DisconnectReason.PARTICIPANT_REMOVED]: "You were removed from the room by its admin.",
  [DisconnectReason.ROOM_DELETED]: "The room was ended by its admin.",
  [DisconnectReason.DUPLICATE_IDENTITY]: "Someone else joined this room with your name, which disconnected you.",
};

// The rooms panel (rooms.js) highlights this page's room and shows who speaks in it.
function announceRoom(joined) {
  window.dispatchEvent(new CustomEvent("demo-room", { detail: joined }));
}

function markMuted(participant) {
  tileFor(participant).dataset.micMuted = String(!participant.isMicrophoneEnabled);
  if (participant === room?.localParticipant) setToggle(micButton, participant.isMicrophoneEnabled, "Microphone");
}

nameField.value ||= `guest-${Math.random().toString(36).slice(2, 7)}`;
form.roomName.value = roomFromUrl() || form.roomName.value; // an invite link names the room
if (!urlField.value) urlField.value = document.body.dataset.livekitUrl;

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

async function fetchToken(roomName, participantName) {
  let response;
  try {
    response = await fetch("/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ roomName, participantName }),
    });
  } catch {
    throw new Error("Could not reach this application server to get a token.");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(`Could not get a token: ${body.errorMessage || response.statusText}`);
  }
  return body.token;
}

function mediaErrorText(error) {
  if (error?.name === "NotAllowedError") {
    return "Camera or microphone access was denied. Allow it in the browser's site settings, then use the toggles.";
  }
  if (error?.name === "NotFoundError") {
    return "No camera or microphone was found. You are in the room without them.";
  }
  return `Could not start camera or microphone: ${error?.message || error}`;
}

function tileFor(participant) {
  let tile = tiles.querySelector(`[data-identity="${CSS.escape(participant.identity)}"]`);
  if (!tile) {
    tile = document.createElement("figure");
    tile.className = "tile";
    tile.dataset.identity = participant.identity;
    tile.dataset.local = String(participant === room?.localParticipant);
    const caption = document.createElement("figcaption");
    caption.textContent = participant.name || participant.identity;
    if (tile.dataset.local === "true") caption.textContent += " (you)";
    tile.append(caption);
    tiles.append(tile);
  }
  return tile;
}

function attach(track, participant) {
  const tile = tileFor(participant);
  if (track.kind === Track.Kind.Video) {
    const video = track.attach();
    video.muted = true;
    video.playsInline = true;
    tile.querySelector("video")?.remove();
    tile.prepend(video);
  } else if (participant !== room.localParticipant) {
    tile.append(track.attach()); // remote audio plays; our own would echo
  }
}

function detach(track, participant) {
  for (const element of track.detach()) element.remove();
  // A track unpublished by the server (permission revoked) was detached before we hear of it.
  if (participant) {
    for (const media of tileFor(participant).querySelectorAll("video, audio")) if (!media.srcObject) media.remove();
  }
}

function updateCount() {
  const count = room ? room.remoteParticipants.size + 1 : 0;
  countLabel.textContent = `${count} participant${count === 1 ? "" : "s"}`;
  countLabel.dataset.count = String(count);
}

function setToggle(button, on, what) {
  button.setAttribute("aria-pressed", String(on));
  button.textContent = `${what} ${on ? "on" : "off"}`;
}

function showJoined(joined) {
  inRoom.hidden = !joined;
  for (const element of form.elements) element.disabled = joined;
  joinButton.textContent = "Join room";
}

async function join(event) {
  event.preventDefault();
  showError("");
  const roomName = form.roomName.value.trim();
  const participantName = form.participantName.value.trim();
  const url = form.livekitUrl.value.trim();
  joinButton.disabled = true;
  joinButton.textContent = "Joining…";
  try {
    const token = await fetchToken(roomName, participantName);
    room = new Room({ adaptiveStream: true, dynacast: true });
    room
      .on(RoomEvent.TrackSubscribed, (track, _publication, participant) => attach(track, participant))
      .on(RoomEvent.TrackUnsubscribed, (track, _publication, participant) => detach(track, participant))
      .on(RoomEvent.LocalTrackPublished, (publication) => attach(publication.track, room.localParticipant))
      .on(RoomEvent.LocalTrackUnpublished, (publication) => detach(publication.track))
      .on(RoomEvent.ParticipantConnected, (participant) => { tileFor(participant); updateCount(); })
      .on(RoomEvent.ParticipantDisconnected, (participant) => {
        tiles.querySelector(`[data-identity="${CSS.escape(participant.identity)}"]`)?.remove();
        updateCount();
      })
      .on(RoomEvent.TrackMuted, (_publication, participant) => markMuted(participant))
      .on(RoomEvent.TrackUnmuted, (_publication, participant) => markMuted(participant))
      .on(RoomEvent.Disconnected, (reason) => {
        leave();
        if (DISCONNECTED_BECAUSE[reason]) showError(DISCONNECTED_BECAUSE[reason]);
      });
    try {
      await room.connect(url, token);
    } catch (error) {
      const reason = error instanceof ConnectionError ? "" : ` (${error.message})`;
      throw new Error(`Could not connect to the LiveKit server at ${url}. Is it running and reachable?${reason}`);
    }
    roomTitle.textContent = `In room “${room.name}” as ${room.localParticipant.identity}`;
    tileFor(room.localParticipant);
    for (const participant of room.remoteParticipants.values()) tileFor(participant);
    updateCount();
    showJoined(true);
    showInvite(room.name);
    announceRoom(room);
    try {
      await room.localParticipant.enableCameraAndMicrophone();
    } catch (error) {
      showError(mediaErrorText(error));
    }
    setToggle(micButton, room.localParticipant.isMicrophoneEnabled, "Microphone");
    setToggle(cameraButton, room.localParticipant.isCameraEnabled, "Camera");
  } catch (error) {
    await leave();
    showError(error.message);
  } finally {
    joinButton.disabled = Boolean(room);
    joinButton.textContent = "Join room";
  }
}

async function leave() {
  const leaving = room;
  room = null;
  if (leaving) announceRoom(null);
  if (leaving) await leaving.disconnect();
  tiles.replaceChildren();
  updateCount();
  showJoined(false);
  hideInvite();
}

async function toggle(button, what, isOn, setOn) {
  if (!room) return;
  button.disabled = true;
  try {
    await setOn(!isOn());
  } catch (error) {
    showError(mediaErrorText(error));
  } finally {
    button.disabled = false;
    setToggle(button, isOn(), what);
  }
}

form.addEventListener("submit", join);
leaveButton.addEventListener("click", () => leave());
micButton.addEventListener("click", () => toggle(micButton, "Microphone",
  () => room.localParticipant.isMicrophoneEnabled, (on) => room.localParticipant.setMicrophoneEnabled(on)));
cameraButton.addEventListener("click", () => toggle(cameraButton, "Camera",
  () => room.localParticipant.isCameraEnabled, (on) => room.localParticipant.setCameraEnabled(on)));
window.addEventListener("beforeunload", () => room?.disconnect());
