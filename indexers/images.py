"""Safe image loading: size limits, decompression bombs, truncated files, odd modes, animations."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image, ImageFile, UnidentifiedImageError

from engine.errors import InvalidInputError

ImageFile.LOAD_TRUNCATED_IMAGES = False


def read_image_bytes(ref: str, base_dir: Path | None, max_bytes: int, timeout_s: float = 10.0, allow_local: bool = True) -> bytes:
    """Bytes of an image given as a path (relative to ``base_dir``), ``file://`` or ``http(s)://`` URL.
    ``allow_local=False`` (the HTTP API) refuses paths, so a client cannot make the server read its files."""
    parsed = urlparse(ref)
    if parsed.scheme in ("http", "https"):
        try:
            import httpx
        except ImportError as e:  # pragma: no cover
            raise InvalidInputError("image URLs need httpx (pip install 'persona-engine[server]')") from e
        try:
            with httpx.stream("GET", ref, timeout=timeout_s, follow_redirects=True) as r:
                r.raise_for_status()
                buf = bytearray()
                for chunk in r.iter_bytes():
                    buf += chunk
                    if len(buf) > max_bytes:
                        raise InvalidInputError(f"image {ref} is larger than {max_bytes} bytes")
                return bytes(buf)
        except httpx.HTTPError as e:
            raise InvalidInputError(f"cannot fetch image {ref}: {e}") from e
    if not allow_local:
        raise InvalidInputError("local image paths are not accepted here; give an http(s) URL")
    path = Path(parsed.path) if parsed.scheme == "file" else Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InvalidInputError(f"image {ref} not found") from e
    if size > max_bytes:
        raise InvalidInputError(f"image {ref} is {size} bytes, over the {max_bytes} limit")
    return path.read_bytes()


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
