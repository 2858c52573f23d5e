// The rooms panel: every live room from WS /live/rooms (a snapshot, then changes), and the
// admin actions on them through the admin API. This page's own room is highlighted, and
// who speaks in it comes from livekit-client (LiveKit tells servers nothing about that).
import { RoomEvent } from "/vendor/livekit-client/livekit-client.esm.mjs";

const list = document.getElementById("room-list");
const stateLine = document.getElementById("rooms-state");
const errorBox = document.getElementById("rooms-error");
const countBadge = document.getElementById("room-count");
const secretForm = document.getElementById("admin-key-form");
const secretField = document.getElementById("admin-key");

const BANS = [["", "No ban"], ["60", "Ban 1 min"], ["600", "Ban 10 min"], ["3600", "Ban 1 hour"], ["86400", "Ban 1 day"]];
const rooms = new Map(); // name -> room, as the server sends it
const banChoices = new Map(); // "room\nidentity" -> seconds chosen in the select
let secret = sessionStorage.getItem("adminSecret") || "";
let ownRoom = null; // this page's livekit-client Room while joined
let speaking = new Set();
let retryDelay = 500;

function setState(state, text) {
  stateLine.dataset.state = state;
  stateLine.textContent = text;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function headers(withBody) {
  // X-Requested-With: what the server asks of its own page when no ADMIN_SECRET is set.
  const sent = { "X-Requested-With": "livekit-demo" };
  if (secret) sent.Authorization = `Bearer ${secret}`;
  if (withBody) sent["Content-Type"] = "application/json";
  return sent;
}

async function admin(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.errorMessage || response.statusText);
  return answer;
}

const roomPath = (room) => `/rooms/${encodeURIComponent(room)}`;
const participantPath = (room, identity) => `${roomPath(room)}/participants/${encodeURIComponent(identity)}`;

// The page says what the admin API is for it (the server checks every call all the same):
// `key` (ADMIN_SECRET is set: ask for it), `page` (development, on localhost) or `off`.
function start() {
  const mode = document.body.dataset.adminApi;
  if (mode === "off") {
    setState("off", "Rooms: the admin API is off. Set ADMIN_SECRET to use it (without one, only on localhost in development).");
  } else if (mode === "key" && !secret) {
    setState("locked", "Rooms: enter the admin key (ADMIN_SECRET) to see and manage rooms.");
    secretForm.hidden = false;
  } else {
    secretForm.hidden = true;
    connect();
  }
}

function retry(why) {
  setState("reconnecting", `Rooms: ${why}; retrying…`);
  setTimeout(connect, retryDelay);
  retryDelay = Math.min(retryDelay * 2, 10000);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/live/rooms`);
  socket.addEventListener("open", () => {
    if (secret) socket.send(JSON.stringify({ authorization: `Bearer ${secret}` }));
  });
  socket.addEventListener("message", (message) => {
    retryDelay = 500;
    receive(JSON.parse(message.data));
  });
  socket.addEventListener("close", (closed) => {
    if (closed.code === 4401 || closed.code === 4403) {
      setState("locked", `Rooms: ${closed.reason}`);
      secretForm.hidden = false;
    } else {
      retry(closed.reason || "disconnected");
    }
  });
}

function receive(message) {
  if (message.type === "snapshot") {
    rooms.clear();
    for (const room of message.rooms) rooms.set(room.name, room);
    setStatus(message.livekit);
  } else if (message.type === "room") {
    rooms.set(message.room.name, message.room);
  } else if (message.type === "room_closed") {
    rooms.delete(message.name);
  } else if (message.type === "status") {
    setStatus(message.livekit);
  }
  render();
}

function setStatus(livekit) {
  if (livekit.ok === false) setState("degraded", `Rooms: LiveKit cannot be asked (${livekit.error}); showing what webhooks said`);
  else setState("live", "Rooms: live");
}

// Rendering. Updates rebuild the list, so the focused control is found again by its key.

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

function button(text, action, className) {
  const made = element("button", className, text);
  made.type = "button";
  made.dataset.action = action;
  return made;
}

function isOwn(room) {
  return Boolean(ownRoom && ownRoom.name === room.name);
}

// What livekit-client knows of a track's mute in this page's room is newer than the server's.
function trackMuted(room, identity, track) {
  if (isOwn(room)) {
    const participant = identity === ownRoom.localParticipant.identity
      ? ownRoom.localParticipant : ownRoom.remoteParticipants.get(identity);
    const publication = participant?.getTrackPublication?.(track.source.toLowerCase());
    if (publication && publication.trackSid === track.sid) return publication.isMuted;
  }
  return track.muted;
}

function participantRow(room, participant) {
  const row = element("li", "participant");
  row.dataset.identity = participant.identity;
  row.dataset.speaking = String(isOwn(room) && speaking.has(participant.identity));
  const who = element("div", "who");
  who.append(
    element("span", "participant-name", participant.name || participant.identity),
    element("span", "participant-identity", participant.identity),
    element("span", "participant-state", participant.state.toLowerCase()),
    element("span", "speaking-badge", "speaking"),
  );
  const tracks = element("ul", "track-list");
  tracks.setAttribute("aria-label", "Tracks");
  let micMuted = true;
  for (const track of participant.tracks) {
    const muted = trackMuted(room, participant.identity, track);
    const item = element("li", "track", `${track.source.toLowerCase().replace(/_/g, " ")}${muted ? " · muted" : ""}`);
    item.dataset.source = track.source;
    item.dataset.muted = String(muted);
    tracks.append(item);
    if (track.source === "MICROPHONE" && !muted) micMuted = false;
  }
  if (!participant.tracks.length) tracks.append(element("li", "track none", "no tracks"));

  const actions = element("div", "actions");
  const hasMic = participant.tracks.some((track) => track.source === "MICROPHONE");
  const mute = button(micMuted && hasMic ? "Unmute" : "Mute", "mute");
  mute.disabled = !hasMic;
  mute.dataset.muted = String(!micMuted);
  mute.setAttribute("aria-label", `${mute.textContent} ${participant.identity}'s microphone`);
  const key = `${room.name}\n${participant.identity}`;
  const ban = element("select", "ban-choice");
  ban.dataset.action = "ban";
  ban.setAttribute("aria-label", `Ban for ${participant.identity} when kicked`);
  for (const [seconds, label] of BANS) {
    const option = element("option", "", label);
    option.value = seconds;
    ban.append(option);
  }
  ban.value = banChoices.get(key) || "";
  ban.addEventListener("change", () => banChoices.set(key, ban.value));
  const kick = button("Kick", "kick", "danger");
  kick.setAttribute("aria-label", `Kick ${participant.identity}`);
  actions.append(mute, ban, kick);
  mute.addEventListener("click", () => act(mute, () => admin("POST", `${participantPath(room.name, participant.identity)}/mute`,
    { source: "microphone", muted: mute.dataset.muted !== "true" })));
  kick.addEventListener("click", () => act(kick, () => admin("POST", `${participantPath(room.name, participant.identity)}/remove`,
    ban.value ? { ban_seconds: Number(ban.value) } : {})));
  row.append(who, tracks, actions);
  return row;
}

function roomEntry(room) {
  const entry = element("li", "room-entry");
  entry.dataset.room = room.name;
  entry.dataset.own = String(isOwn(room));
  if (isOwn(room)) entry.setAttribute("aria-current", "true");
  const head = element("div", "room-head");
  const title = element("h3", "room-name", room.name);
  const count = element("span", "room-count", `${room.numParticipants} participant${room.numParticipants === 1 ? "" : "s"}`);
  const end = button("End room", "end", "danger");
  end.setAttribute("aria-label", `End room ${room.name} for everyone`);
  end.addEventListener("click", () => {
    if (end.dataset.armed !== "true") { // a second press confirms: no dialog to block the page
      end.dataset.armed = "true";
      end.textContent = "Confirm: end for everyone";
      setTimeout(() => { end.dataset.armed = "false"; end.textContent = "End room"; }, 5000);
      return;
    }
    act(end, () => admin("DELETE", roomPath(room.name)));
  });
  head.append(title, count);
  if (isOwn(room)) head.append(element("span", "own-badge", "your room"));
  head.append(end);
  const participants = element("ul", "participant-list");
  participants.setAttribute("aria-label", `Participants in ${room.name}`);
  for (const participant of room.participants) participants.append(participantRow(room, participant));
  entry.append(head, participants);
  return entry;
}

function focusKey(node) {
  const control = node?.closest?.("[data-action]");
  if (!control || !list.contains(control)) return null;
  return [control.closest("[data-room]")?.dataset.room, control.closest("[data-identity]")?.dataset.identity, control.dataset.action];
}

function render() {
  const focused = focusKey(document.activeElement);
  const names = [...rooms.keys()].sort((a, b) => Number(isOwn(rooms.get(b))) - Number(isOwn(rooms.get(a))) || a.localeCompare(b));
  list.replaceChildren(...names.map((name) => roomEntry(rooms.get(name))));
  if (!names.length) list.append(element("li", "empty", "No live rooms."));
  countBadge.textContent = String(names.length);
  if (focused) {
    const [room, identity, action] = focused;
    for (const control of list.querySelectorAll(`[data-action="${action}"]`)) {
      if (control.closest("[data-room]")?.dataset.room === room
          && control.closest("[data-identity]")?.dataset.identity === identity) control.focus();
    }
  }
}

async function act(control, request) {
  showError("");
  control.disabled = true;
  try {
    await request();
  } catch (error) {
    showError(error.message);
  } finally {
    control.disabled = false;
  }
}

// This page's own room, announced by room.js.
window.addEventListener("demo-room", (event) => {
  ownRoom = event.detail;
  speaking = new Set();
  if (ownRoom) {
    ownRoom
      .on(RoomEvent.ActiveSpeakersChanged, (speakers) => {
        speaking = new Set(speakers.map((participant) => participant.identity));
        for (const row of list.querySelectorAll('.room-entry[data-own="true"] .participant')) {
          row.dataset.speaking = String(speaking.has(row.dataset.identity));
        }
      })
      .on(RoomEvent.TrackMuted, render)
      .on(RoomEvent.TrackUnmuted, render);
  }
  render();
});

secretForm.addEventListener("submit", (event) => {
  event.preventDefault();
  secret = secretField.value.trim();
  sessionStorage.setItem("adminSecret", secret);
  secretField.value = "";
  start();
});

render();
start();
