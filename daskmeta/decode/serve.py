"""An HTTP decoding service: a decoder model loaded once, images decoded on request.

A real ASGI application (Starlette, served by uvicorn; ``pip install daskmeta[serve]``):

- ``POST /decode``: a NIfTI image (``.nii`` or ``.nii.gz``) as the request body, or as the
  one file of a ``multipart/form-data`` upload; ``?top=N`` (default 20, 0 for every label).
  Answers ``{"model", "n_labels", "labels": [{"label", "r", "n_studies"}, ...]}``, ranked by r.
- ``GET /labels``: every label and its number of studies.
- ``GET /health``: ``{"status": "ok", ...}``.

Uploads larger than ``max_upload_bytes`` (also once decompressed, against decompression
bombs) get 413; an empty or unreadable upload 400; an image that is not one 3-D volume, or is
constant or not finite inside the mask, 422; every error as ``{"error": message}``. Images on
another grid are resampled to the model's mask (in worker threads, at most
``max_concurrent`` at once). The images of concurrent requests are correlated together: while
one matrix product runs (in a thread: the server keeps answering), arriving images queue up
for the next, so 20 simultaneous requests cost about two passes over the model, not 20.
"""

from __future__ import annotations

import gzip
import io
import zlib

import numpy as np

from daskmeta.decode.model import DecoderModel, images_to_matrix
from daskmeta.exceptions import DaskmetaError

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "create_app", "serve"]

#: Default largest upload (and largest decompressed image): 64 MiB.
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _decompress(data: bytes, limit: int) -> bytes:
    """gunzip ``data`` if gzipped, refusing more than ``limit`` bytes of output."""
    if data[:2] != b"\x1f\x8b":
        return data
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = io.BytesIO()
    try:
        view = data
        while view:
            out.write(d.decompress(view, limit + 1 - out.tell()))
            if out.tell() > limit:
                raise _HTTPError(413, f"the image is larger than {limit} bytes once "
                                      "decompressed")
            view = d.unconsumed_tail
            if d.eof:
                break
    except (zlib.error, EOFError, gzip.BadGzipFile) as exc:
        raise _HTTPError(400, f"the upload is not a valid gzip file ({exc})") from None
    return out.getvalue()


def _nifti(data: bytes, limit: int):
    import nibabel as nib

    if not data:
        raise _HTTPError(400, "empty upload: send a NIfTI image (.nii or .nii.gz)")
    raw = _decompress(data, limit)
    try:
        if len(raw) >= 348 and raw[344:348] in (b"n+1\x00", b"ni1\x00"):
            img = nib.Nifti1Image.from_bytes(raw)
        elif len(raw) >= 540 and raw[4:8] in (b"n+2\x00", b"ni2\x00"):
            img = nib.Nifti2Image.from_bytes(raw)
        else:
            raise ValueError("no NIfTI-1 or NIfTI-2 header")
        np.asanyarray(img.dataobj)  # read the data now: truncated files fail here
    except Exception as exc:
        raise _HTTPError(400, f"the upload is not a readable NIfTI image ({exc})") from None
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise _HTTPError(422, f"expected one 3-D image; got shape {tuple(shape)}")
    if min(img.shape) < 2:
        raise _HTTPError(422, f"expected a 3-D volume; got shape {tuple(img.shape)}")
    return img


class _Batcher:
    """Decodes the images of concurrent requests together: while one matrix product runs,
    the images that arrive queue up and go into the next (at most ``max_batch``)."""

    def __init__(self, model, max_batch: int = 32):
        self.model = model
        self.max_batch = max_batch
        self.queue = None

    async def correlate(self, vector):
        import asyncio

        if self.queue is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((vector, future))
        return await future

    async def _run(self):
        import anyio

        while True:
            items = [await self.queue.get()]
            while not self.queue.empty() and len(items) < self.max_batch:
                items.append(self.queue.get_nowait())
            try:
                r = await anyio.to_thread.run_sync(
                    self.model.correlate, np.vstack([v for v, _ in items]))
            except Exception as exc:  # each waiting request gets the error
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for j, (_, future) in enumerate(items):
                if not future.done():
                    future.set_result(r[:, j])


def create_app(model, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_concurrent: int = 2):
    """The Starlette application serving ``model`` (a :class:`DecoderModel` or its path).

    Parameters
    ----------
    model : DecoderModel or path-like
    max_upload_bytes : int
        Largest accepted upload, and largest image once decompressed.
    max_concurrent : int
        Decodes computed at once (the others wait).
    """
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    if not isinstance(model, DecoderModel):
        model = DecoderModel.open(model)
    if not (isinstance(max_upload_bytes, int) and max_upload_bytes > 0):
        raise DaskmetaError(f"max_upload_bytes must be a positive integer; got "
                            f"{max_upload_bytes!r}")
    limiter = anyio.CapacityLimiter(max(1, int(max_concurrent)))
    name = model.path.name
    labels_payload = [{"label": lab, "n_studies": int(n)}
                      for lab, n in zip(model.labels, model.n_studies)]

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > max_upload_bytes:
                    raise _HTTPError(413, f"upload of {int(declared)} bytes is larger than "
                                          f"the limit of {max_upload_bytes} bytes")
            except ValueError:
                raise _HTTPError(400, "bad Content-Length header") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload_bytes:
                raise _HTTPError(413, f"upload larger than the limit of {max_upload_bytes} "
                                      "bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def upload(request: Request) -> bytes:
        body = await read_body(request)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async def replay():
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                form = await Request(request.scope, receive=replay).form(
                    max_files=1, max_fields=10, max_part_size=max_upload_bytes)
                files = [v for v in form.values() if hasattr(v, "read")]
                if len(files) != 1:
                    raise _HTTPError(400, f"a multipart upload must hold one file; got "
                                          f"{len(files)}")
                return await files[0].read()
            except _HTTPError:
                raise
            except Exception as exc:
                raise _HTTPError(400, f"malformed multipart upload ({exc})") from None
        return body

    batcher = _Batcher(model)

    def prepare(body: bytes):
        return images_to_matrix(_nifti(body, max_upload_bytes), model.space, "the upload")

    def rank(r, top: int):
        order = np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")
        if top:
            order = order[:top]
        return [{"label": model.labels[i], "r": float(r[i]) if np.isfinite(r[i]) else None,
                 "n_studies": int(model.n_studies[i])} for i in order]

    async def decode(request: Request):
        try:
            top_text = request.query_params.get("top", "20")
            try:
                top = int(top_text)
                if top < 0:
                    raise ValueError
            except ValueError:
                raise _HTTPError(400, f"top must be a non-negative integer; got "
                                      f"{top_text!r}") from None
            body = await upload(request)
            try:  # reading, resampling: in a worker thread, off the event loop
                vector = await anyio.to_thread.run_sync(prepare, body, limiter=limiter)
            except DaskmetaError as exc:
                raise _HTTPError(422, " ".join(str(exc).split())) from None
            ranked = rank(await batcher.correlate(vector), top)
        except _HTTPError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except Exception as exc:  # never a bare 500 page: a one-line message
            return JSONResponse({"error": f"cannot decode the upload ({type(exc).__name__}: "
                                          f"{' '.join(str(exc).split())[:300]})"},
                                status_code=400)
        return JSONResponse({"model": name, "n_labels": model.n_labels, "labels": ranked})

    async def labels(request: Request):
        return JSONResponse({"model": name, "n_labels": model.n_labels,
                             "labels": labels_payload})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": name, "n_labels": model.n_labels,
                             "n_voxels": model.space.n_voxels,
                             "target_image": model.attrs.get("target_image")})

    app = Starlette(routes=[Route("/decode", decode, methods=["POST"]),
                            Route("/labels", labels, methods=["GET"]),
                            Route("/health", health, methods=["GET"])])
    app.state.model = model
    return app


def serve(model, host: str = "127.0.0.1", port: int = 8000,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, log_level: str = "info") -> None:
    """Serve a model with uvicorn until interrupted."""
    import uvicorn

    app = create_app(model, max_upload_bytes=max_upload_bytes)
    uvicorn.run(app, host=host, port=int(port), log_level=log_level)
