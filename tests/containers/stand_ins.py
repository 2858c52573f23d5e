"""Local stand-ins for the public images that the Dockerfile and compose.yaml name.

No container registry is reachable here, so the tests build them from what the machine has:
a Debian base made with debootstrap from the apt source the machine uses, imported with
`podman import` (for python:*-slim); this machine's node and npm on it (for node:*-slim,
which only runs `npm ci`); the pinned livekit-server binary (for livekit/livekit-server);
Debian's redis-server (for redis); this machine's Caddy (for caddy). Each is tagged by a
hash of its inputs and kept, with the base's root filesystem, under tools/containers, so a
second run (the other Python of `.ci/run`) reuses them. The Containerfiles are in
local_images/.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ground.config import PROJECT_DIR
from tests.containers.podman import CACHE_DIR, PREFIX, environment, inspect, podman

LOCAL_IMAGES = Path(__file__).parent / "local_images"
# What python:*-slim gives the Dockerfile: python3 with its venv module, CA certificates.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    keyring: str | None


def apt_source() -> AptSource:
    """The Debian mirror and suite this machine installs from, read from its apt sources
    (one-line .list files and deb822 .sources files): the first `deb` entry for the
    release in /etc/os-release with the main component."""
    release = _os_release().get("VERSION_CODENAME", "")
    entries: list[tuple[list[str], list[str], list[str], str | None]] = []
    sources = Path("/etc/apt")
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]:
        if path.suffix == ".sources" or path.name == "sources.list" or path.suffix == ".list":
            with contextlib.suppress(OSError):
                text = path.read_text()
                entries += _deb822(text) if path.suffix == ".sources" else _one_line(text)
    for uris, suites, components, keyring in entries:
        if release in suites and "main" in components:
            return AptSource(uris[0], release, keyring)
    raise AssertionError(f"no `deb ... {release} main` entry in /etc/apt/sources.list*")


def _os_release() -> dict[str, str]:
    text = Path("/etc/os-release").read_text()
    return {key: value.strip('"') for key, _, value in (line.partition("=") for line in text.splitlines())}


def _one_line(text: str) -> list[tuple[list[str], list[str], list[str], str | None]]:
    found = []
    for line in text.splitlines():
        options = re.search(r"\[([^]]*)\]", line)
        words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
        if len(words) >= 4 and words[0] == "deb":
            keyring = re.search(r"signed-by=(\S+)", options.group(1)) if options else None
            found.append(([words[1]], [words[2]], words[3:], keyring.group(1) if keyring else None))
    return found


def _deb822(text: str) -> list[tuple[list[str], list[str], list[str], str | None]]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            key, _, value = line.partition(":")
            if not line.startswith(("#", " ", "\t")) and value.strip():
                fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            found.append(
                (
                    fields.get("uris", "").split(),
                    fields.get("suites", "").split(),
                    fields.get("components", "").split(),
                    fields.get("signed-by") or None,
                )
            )
    return [entry for entry in found if entry[0]]


def _digest(*parts: Any) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with open(part, "rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    hashed.update(block)
        else:
            hashed.update(repr(part).encode())
    return hashed.hexdigest()[:16]


def _image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def _drop_other_tags(repository: str, keep: str) -> None:
    """Older builds of an image (other inputs): they would only fill the disk."""
    tags = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repository, check=False).stdout.split()
    stale = [tag for tag in tags if tag != keep]
    if stale:
        podman("rmi", "--force", *stale, check=False)


def base_image(log: Any) -> str:
    """The local Debian base: debootstrap minbase plus BASE_PACKAGES, trimmed as Debian's
    slim images are (no apt lists or caches, documentation or translations)."""
    source = apt_source()
    key = _digest(source, BASE_PACKAGES, "trim-1")
    tag = f"localhost/{PREFIX}-base:{key}"
    if _image_exists(tag):
        return tag
    rootfs_tar = CACHE_DIR / f"base-{key}.tar"
    if not rootfs_tar.exists():
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
            root = Path(work) / "rootfs"
            command = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
            if source.keyring and source.keyring.startswith("/"):
                command.append(f"--keyring={source.keyring}")
            command += [source.suite, str(root), source.uri]
            result = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                raise AssertionError(f"debootstrap failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
            for trimmed in (
                "var/cache/apt",
                "var/lib/apt/lists",
                "usr/share/doc",
                "usr/share/man",
                "usr/share/info",
            ):
                for child in (root / trimmed).glob("*"):
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            for child in (root / "usr/share/locale").glob("*"):
                if child.name != "locale.alias":
                    shutil.rmtree(child)
            partial = rootfs_tar.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True, timeout=300)
            partial.rename(rootfs_tar)
        log(f"debootstrap base ({source.suite} from {source.uri}): {time.monotonic() - started:.0f} s")
    podman(
        "import",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        'CMD ["python3"]',
        str(rootfs_tar),
        tag,
        timeout=300,
    )
    for old in CACHE_DIR.glob("base-*.tar"):
        if old != rootfs_tar:
            old.unlink()
    _drop_other_tags(f"localhost/{PREFIX}-base", tag)
    return tag


def _stand_in(name: str, base: str, files: dict[str, Path], log: Any) -> str:
    """A stand-in image built from local_images/<name>.Containerfile on the base,
    with `files` (name in the build context -> where it is here) copied in."""
    containerfile = LOCAL_IMAGES / f"{name}.Containerfile"
    key = _digest(
        base, containerfile, *sorted((n, _digest(p) if p.is_file() else _tree(p)) for n, p in files.items())
    )
    tag = f"localhost/{PREFIX}-{name}:{key}"
    if _image_exists(tag):
        return tag
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as context:
        for inside, here in files.items():
            if here.is_dir():
                shutil.copytree(here, Path(context) / inside, symlinks=True)
            else:
                shutil.copy2(here, Path(context) / inside)
        podman(
            "build", "--quiet", "--file", str(containerfile), "--build-arg", f"BASE_IMAGE={base}",
            "--tag", tag, context, timeout=600,
        )  # fmt: skip
    log(f"{name} stand-in image built in {time.monotonic() - started:.0f} s")
    _drop_other_tags(f"localhost/{PREFIX}-{name}", tag)
    return tag


def _tree(directory: Path) -> str:
    """A cheap fingerprint of a directory: its files' names, sizes and times."""
    listing = sorted(
        (str(path.relative_to(directory)), path.stat().st_size, int(path.stat().st_mtime))
        for path in directory.rglob("*")
        if path.is_file()
    )
    return _digest(listing)


def node_and_npm() -> tuple[Path, Path] | None:
    """This machine's node binary and npm package directory, if it has both."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        return None
    npm_dir = Path(npm).resolve().parent.parent  # .../node_modules/npm/bin/npm-cli.js
    return Path(node).resolve(), npm_dir


@dataclass
class Images:
    base: str
    node: str
    livekit: str
    redis: str
    server: str
    build: dict[str, Any]  # how the server image was built: seconds cold and warm, size


def stand_ins(livekit_binary: str, log: Any) -> tuple[str, str, str, str]:
    base = base_image(log)
    found = node_and_npm()
    assert found, "node and npm are needed for the node stand-in image (`make setup` needs them too)"
    node, npm = found
    return (
        base,
        _stand_in("node", base, {"node": node, "npm": npm}, log),
        _stand_in("livekit", base, {"livekit-server": Path(livekit_binary)}, log),
        _stand_in("redis", base, {}, log),
    )


def caddy_image(base: str, log: Any) -> str | None:
    """The caddy:2 stand-in, from this machine's Caddy; None without one."""
    caddy = shutil.which("caddy")
    return _stand_in("caddy", base, {"caddy": Path(caddy).resolve()}, log) if caddy else None


def build_context_files() -> list[Path]:
    """The files the Dockerfile may copy: what .dockerignore lets into the context."""
    allowed = [
        line[1:].rstrip("/")
        for line in (PROJECT_DIR / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    files: list[Path] = []
    for name in allowed:
        path = PROJECT_DIR / name
        files += (
            sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            if path.is_dir()
            else [path]
        )
    return files


def ca_bundle() -> str | None:
    """The CA bundle this machine's pip is configured with (a network whose TLS is
    intercepted), handed to the build as the secret `ca`; None when pip names none."""
    named = os.environ.get("PIP_CERT")
    if not named:
        result = subprocess.run(
            ["python3", "-m", "pip", "config", "get", "global.cert"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        named = result.stdout.strip() if result.returncode == 0 else ""
    return named if named and Path(named).is_file() else None


def server_image(python_image: str, node_image: str, log: Any) -> tuple[str, dict[str, Any]]:
    """The Dockerfile built on the stand-ins: cold (no layer cache) once per change of its
    inputs, then once more warm; the timings and size kept beside it for later runs."""
    files = [PROJECT_DIR / "Dockerfile", PROJECT_DIR / ".dockerignore", *build_context_files()]
    key = _digest(python_image, node_image, *[(str(f.relative_to(PROJECT_DIR)), _digest(f)) for f in files])
    tag = f"localhost/{PREFIX}-server:{key}"
    record = CACHE_DIR / f"server-{key}.json"
    if _image_exists(tag) and record.exists():
        return tag, {**json.loads(record.read_text()), "reused": True}
    command = [
        "build", "--format", "docker", "--tag", tag,
        "--build-arg", f"PYTHON_IMAGE={python_image}", "--build-arg", f"NODE_IMAGE={node_image}",
    ]  # fmt: skip
    if bundle := ca_bundle():
        command += ["--secret", f"id=ca,src={bundle}"]
    # The stages of earlier builds, now unused; this build's stay: they are the layer cache
    # that compose's `--build` (no build secret) finds everything in.
    _drop_other_tags(f"localhost/{PREFIX}-server", tag)
    podman("image", "prune", "--force", check=False)
    timings = {}
    for kind, extra in (("cold", ["--no-cache"]), ("warm", [])):
        started = time.monotonic()
        podman(*command, *extra, str(PROJECT_DIR), timeout=900)
        timings[kind] = round(time.monotonic() - started, 1)
    size = int(inspect(tag, "{{.Size}}", "image"))
    base_size = int(inspect(python_image, "{{.Size}}", "image"))
    built = {
        "cold_seconds": timings["cold"],
        "warm_seconds": timings["warm"],
        "size": size,
        "base_size": base_size,
    }
    record.write_text(json.dumps(built))
    for old in CACHE_DIR.glob("server-*.json"):
        if old != record:
            old.unlink()
    return tag, {**built, "reused": False}
