"""Safe image loading: confined local paths (regular files only, bounded reads), URL fetches with a
total deadline, a byte limit and no hops to private addresses; size limits, decompression bombs, truncated files, odd modes, animations."""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import socket
import stat
import time
import warnings
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urljoin, urlparse

from PIL import Image, ImageFile, UnidentifiedImageError

from engine.errors import InvalidInputError

ImageFile.LOAD_TRUNCATED_IMAGES = False
log = logging.getLogger(__name__)


_MAX_REDIRECTS = 5


class _Refused(Exception):
    """A fetch refused for a reason safe to show the caller."""


def _ascii_host(host: str) -> str:
    """A host name as it is resolved (IDNA ASCII, lower case), so ``bücher.example`` in the allow
    list matches the ``xn--bcher-kva.example`` that the URL parser hands on."""
    try:
        return host.strip().lower().encode("idna").decode("ascii")
    except UnicodeError:
        return host.strip().lower()


def _pinned_address(host: str, port: int, allowed_hosts: Collection[str]) -> str:
    """Resolve ``host`` once and return the address to connect to. Every address the name resolves to
    must be public (not private, loopback, link-local, multicast or reserved) unless the host is
    explicitly allowed. The caller connects to this address, never to the name again, so a DNS answer
    that changes between the check and the connection (DNS rebinding) cannot reach an internal host."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise _Refused("host does not resolve") from e
    addrs = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addrs:
        raise _Refused("host does not resolve")
    if _ascii_host(host) not in {_ascii_host(h) for h in allowed_hosts}:
        for ip in addrs:
            if not ip.is_global or ip.is_multicast:
                raise _Refused("host resolves to a private, loopback or link-local address")
    return str(addrs[0])


def fetch_url(
    url: str, max_bytes: int, timeout_s: float = 10.0, allowed_hosts: Collection[str] = (), max_redirects: int = _MAX_REDIRECTS
) -> bytes:
    """GET an http(s) URL with a total deadline of ``timeout_s`` and a byte limit enforced while
    reading. Redirects are followed by hand (at most ``max_redirects``); every hop's host is resolved
    once, must resolve to public addresses only (``allowed_hosts`` are exempt, e.g. an internal image
    server), and the request goes to that pinned address with the original Host header and TLS name
    (SNI and certificate check), so DNS rebinding cannot redirect it.
    Errors name the host and a short reason, never the exception text."""
    import httpx

    deadline = time.monotonic() + timeout_s
    host = urlparse(url).hostname or "?"
    try:
        # A fresh client per hop: a pooled TLS connection checked for one host is never reused for another at the same address.
        for _ in range(max_redirects + 1):
            parsed = urlparse(url)
            host = parsed.hostname or "?"
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise _Refused("only http(s) URLs are fetched")
            try:
                target = httpx.URL(url)
            except httpx.InvalidURL as e:
                raise _Refused("malformed URL") from e
            name = target.raw_host.decode("ascii")  # the IDNA form (xn--...): what DNS and TLS see
            ip = _pinned_address(name, target.port or (443 if parsed.scheme == "https" else 80), allowed_hosts)
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Refused("timed out")
            headers = {"Host": target.netloc.decode("ascii")}
            extensions = {"sni_hostname": name} if parsed.scheme == "https" else {}
            with httpx.Client(follow_redirects=False, trust_env=False) as client, \
                    client.stream("GET", target.copy_with(host=ip), headers=headers, extensions=extensions, timeout=httpx.Timeout(left)) as r:
                if r.is_redirect:
                    loc = r.headers.get("location")
                    if not loc:
                        raise _Refused(f"HTTP {r.status_code} without a location")
                    url = urljoin(url, loc)
                    continue
                if r.status_code >= 400:
                    raise _Refused(f"HTTP {r.status_code}")
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise _Refused(f"larger than {max_bytes} bytes")
                buf = bytearray()
                for chunk in r.iter_bytes():
                    buf += chunk
                    if len(buf) > max_bytes:
                        raise _Refused(f"larger than {max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise _Refused("timed out")
                return bytes(buf)
        raise _Refused("too many redirects")
    except _Refused as e:
        raise InvalidInputError(f"cannot fetch image from {host}: {e}") from None
    except httpx.TimeoutException:
        raise InvalidInputError(f"cannot fetch image from {host}: timed out") from None
    except (httpx.HTTPError, OSError) as e:
        log.debug("image fetch from %s failed: %r", host, e)
        raise InvalidInputError(f"cannot fetch image from {host}: connection failed") from None


def confine_path(ref: str | Path, root: Path, allow_outside: bool = False) -> Path:
    """``ref`` as a path inside ``root`` (relative refs are taken from ``root``). Absolute paths and
    ``..`` are refused unless ``allow_outside``; symlinks are resolved before the check."""
    path = Path(ref)
    if allow_outside:
        return path if path.is_absolute() else root / path
    if path.is_absolute() or ".." in path.parts:
        raise InvalidInputError(f"image path {str(ref)!r} must be relative to the catalog's image folder, without '..'")
    full = (root / path).resolve()
    if not full.is_relative_to(root.resolve()):
        raise InvalidInputError(f"image path {str(ref)!r} leaves the catalog's image folder")
    return full


def read_local_file(path: Path, max_bytes: int, ref: str = "image") -> bytes:
    """Bytes of a regular file, refusing devices, FIFOs, sockets and directories (no blocking open)
    and anything over ``max_bytes`` (counted while reading, not trusted from stat)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidInputError(f"{ref} not found") from e
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"{ref} is not a regular file")
    if st.st_size > max_bytes:
        raise InvalidInputError(f"{ref} is {st.st_size} bytes, over the {max_bytes} limit")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise InvalidInputError(f"{ref} cannot be opened") from e
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped after the check
            raise InvalidInputError(f"{ref} is not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidInputError(f"{ref} is over the {max_bytes} byte limit")
    return data


def read_image_bytes(
    ref: str, base_dir: Path | None, max_bytes: int, timeout_s: float = 10.0, allow_local: bool = True,
    root: Path | None = None, allow_outside: bool = False, allowed_hosts: Collection[str] = (),
) -> bytes:
    """Bytes of an image given as a path, ``file://`` or ``http(s)://`` URL (see :func:`fetch_url`).
    ``allow_local=False`` (the HTTP API) refuses paths, so a client cannot make the server read its
    files. With ``root``, a path must lie inside it (:func:`confine_path`); otherwise relative paths
    are taken from ``base_dir``. Only regular files are read, at most ``max_bytes``."""
    parsed = urlparse(ref)
    if parsed.scheme in ("http", "https"):
        try:
            import httpx  # noqa: F401
        except ImportError as e:  # pragma: no cover
            raise InvalidInputError("image URLs need httpx (pip install 'persona-engine[server]')") from e
        return fetch_url(ref, max_bytes, timeout_s, allowed_hosts)
    if not allow_local:
        raise InvalidInputError("local image paths are not accepted here; give an http(s) URL")
    if parsed.scheme not in ("", "file") and len(parsed.scheme) > 1:  # (one letter: a Windows drive)
        raise InvalidInputError(f"image {ref!r}: unsupported URL scheme {parsed.scheme!r}")
    raw = parsed.path if parsed.scheme == "file" else ref
    if root is not None:
        path = confine_path(raw, Path(root), allow_outside)
    else:
        path = Path(raw)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    return read_local_file(path, max_bytes, ref=f"image {ref}")


def decode_image(data: bytes, max_pixels: int, ref: str = "image") -> Image.Image:
    """Decode to an RGB image, refusing bombs and broken files with a clear error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise InvalidInputError(f"{ref}: {w}x{h} pixels exceeds the {max_pixels}-pixel limit (decompression bomb?)")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated: the first frame stands for the item
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGBA").convert("RGB") if im.mode in ("P", "LA", "PA") else im.convert("RGB")
            return im
    except InvalidInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInputError(f"{ref}: decompression bomb refused ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InvalidInputError(f"{ref}: unreadable or truncated image ({type(e).__name__}: {e})") from e
