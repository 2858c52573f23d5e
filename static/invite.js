// The invite: this room's link (?room=name) and its QR code, drawn here from the vendored
// qrcode-generator package, so a second device joins the same room in one scan.
import qrcode from "/vendor/qrcode-generator/qrcode.mjs";

const SVG = "http://www.w3.org/2000/svg";
const QUIET_ZONE = 4; // modules of white around the code, as the QR standard asks

const button = document.getElementById("invite-button");
const panel = document.getElementById("invite-panel");
const linkField = document.getElementById("invite-link");
const copyButton = document.getElementById("copy-invite");
const copyStatus = document.getElementById("copy-status");
const localNote = document.getElementById("invite-local-note");
const qrBox = document.getElementById("invite-qr");

/** The room named in this page's URL (`?room=`), or "". */
export function roomFromUrl() {
  return (new URLSearchParams(window.location.search).get("room") || "").trim();
}

/** This page's URL with `?room=` set to roomName. */
export function inviteUrl(roomName) {
  const url = new URL(window.location.pathname, window.location.origin);
  url.searchParams.set("room", roomName);
  return url.href;
}

function qrSvg(text) {
  const code = qrcode(0, "M");
  code.addData(text);
  code.make();
  const count = code.getModuleCount();
  const size = count + 2 * QUIET_ZONE;
  let path = "";
  for (let row = 0; row < count; row += 1) {
    for (let col = 0; col < count; col += 1) {
      if (code.isDark(row, col)) path += `M${col + QUIET_ZONE} ${row + QUIET_ZONE}h1v1h-1z`;
    }
  }
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `QR code of the link ${text}`);
  svg.setAttribute("shape-rendering", "crispEdges");
  const background = document.createElementNS(SVG, "rect");
  background.setAttribute("width", String(size));
  background.setAttribute("height", String(size));
  background.setAttribute("fill", "#fff");
  const modules = document.createElementNS(SVG, "path");
  modules.setAttribute("d", path);
  modules.setAttribute("fill", "#000");
  svg.append(background, modules);
  return svg;
}

function onlyThisMachine() {
  const host = window.location.hostname;
  return host === "localhost" || host === "[::1]" || host.startsWith("127.");
}

function setOpen(open) {
  panel.hidden = !open;
  button.setAttribute("aria-expanded", String(open));
}

/** Show the Invite control for roomName, and make the address bar that same link. */
export function showInvite(roomName) {
  const link = inviteUrl(roomName);
  linkField.value = link;
  qrBox.replaceChildren(qrSvg(link));
  localNote.hidden = !onlyThisMachine();
  copyStatus.textContent = "";
  window.history.replaceState(null, "", link);
  setOpen(false);
}

export function hideInvite() {
  setOpen(false);
}

button.addEventListener("click", () => setOpen(panel.hidden));
panel.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    setOpen(false);
    button.focus();
  }
});
linkField.addEventListener("focus", () => linkField.select());
copyButton.addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(linkField.value);
    copyStatus.textContent = "Link copied.";
  } catch {
    linkField.focus();
    copyStatus.textContent = "Copying is not allowed here: the link is selected, copy it with your keyboard.";
  }
});
