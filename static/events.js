// The webhook event panel: a WebSocket on /events that resumes from its last cursor.

const MAX_ROWS = 500;
const list = document.getElementById("event-list");
const countBadge = document.getElementById("event-count");
const socketState = document.getElementById("socket-state");
const typeFilter = document.getElementById("type-filter");
const roomOnly = document.getElementById("room-only");
const roomField = document.getElementById("room-name");

const seenCursors = new Set();
const knownTypes = new Set();
let lastCursor = null;
let eventCount = 0;
let retryDelay = 500;
// With EVENTS_AUTH_SECRET set, open the page as /#events-secret=<secret>: the secret stays in
// this tab (the fragment is never sent to a server) and goes with the socket as a subprotocol.
const eventsSecret = takeEventsSecret();

function takeEventsSecret() {
  const match = location.hash.match(/(?:^#|&)events-secret=([^&]+)/);
  if (match) {
    sessionStorage.setItem("events-secret", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("events-secret");
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const since = lastCursor ? `?since=${encodeURIComponent(lastCursor)}` : "";
  return `${scheme}://${location.host}/events${since}`;
}

function setState(state, text) {
  socketState.dataset.state = state;
  socketState.textContent = `Events: ${text}`;
}

function connect() {
  const protocols = eventsSecret ? ["livekit-events", `bearer.${eventsSecret}`] : [];
  const socket = new WebSocket(socketUrl(), protocols);
  socket.addEventListener("open", () => {
    retryDelay = 500;
    setState("live", "live");
  });
  socket.addEventListener("message", (message) => {
    const frame = JSON.parse(message.data);
    if (frame.notice) {
      addNotice(frame);
    } else if (!seenCursors.has(frame.cursor)) {
      seenCursors.add(frame.cursor);
      lastCursor = frame.cursor;
      addEvent(frame);
    }
  });
  socket.addEventListener("close", (closed) => {
    const why = closed.reason ? ` (${closed.reason})` : "";
    setState("reconnecting", `reconnecting${why}…`);
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  });
}

function describe(event) {
  const who = event.participant?.identity;
  const track = event.track ? `${(event.track.source || event.track.type || "track").toLowerCase()} ${event.track.sid || ""}` : "";
  const egress = event.egressInfo?.egressId;
  const ingress = event.ingressInfo?.ingressId;
  return [who, track, egress, ingress].filter(Boolean).join(" · ");
}

function eventTime(frame) {
  const seconds = Number(frame.event.createdAt);
  const date = Number.isFinite(seconds) && seconds > 0 ? new Date(seconds * 1000) : new Date(frame.receivedAt);
  return date.toLocaleTimeString();
}

function addEvent(frame) {
  const event = frame.event;
  eventCount += 1;
  countBadge.textContent = String(eventCount);
  if (!knownTypes.has(event.event)) {
    knownTypes.add(event.event);
    const option = document.createElement("option");
    option.value = option.textContent = event.event;
    typeFilter.append(option);
  }
  const row = document.createElement("li");
  row.className = "event";
  row.dataset.type = event.event;
  row.dataset.room = event.room?.name || "";
  row.dataset.cursor = frame.cursor;

  const summary = document.createElement("button");
  summary.type = "button";
  summary.className = "event-summary";
  summary.setAttribute("aria-expanded", "false");
  const cells = [
    ["event-time", eventTime(frame)],
    ["event-type", event.event],
    ["event-room", event.room?.name || "—"],
    ["event-detail", describe(event)],
  ];
  for (const [name, text] of cells) {
    const cell = document.createElement("span");
    cell.className = name;
    cell.textContent = text;
    summary.append(cell);
  }
  const details = document.createElement("pre");
  details.className = "event-json";
  details.hidden = true;
  details.textContent = JSON.stringify(event, null, 2);
  summary.addEventListener("click", () => {
    details.hidden = !details.hidden;
    summary.setAttribute("aria-expanded", String(!details.hidden));
  });
  row.append(summary, details);
  applyFilter(row);
  list.prepend(row);
  while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
}

function addNotice(frame) {
  const row = document.createElement("li");
  row.className = "notice";
  row.dataset.notice = frame.notice;
  row.setAttribute("role", "status");
  row.textContent = frame.message;
  list.prepend(row);
}

function applyFilter(row) {
  if (!row.classList.contains("event")) return;
  const type = typeFilter.value;
  const room = roomField.value.trim();
  row.hidden = Boolean((type && row.dataset.type !== type) || (roomOnly.checked && row.dataset.room !== room));
}

function applyFilters() {
  for (const row of list.children) applyFilter(row);
}

typeFilter.addEventListener("change", applyFilters);
roomOnly.addEventListener("change", applyFilters);
roomField.addEventListener("input", () => roomOnly.checked && applyFilters());

connect();
