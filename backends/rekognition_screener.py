"""The Rekognition screener: DetectModerationLabels on the image bytes; any failure fails closed."""

from __future__ import annotations

import io
import json
import threading

import pybase64
from botocore.exceptions import BotoCoreError, ClientError

from generation.errors import ScreeningFailed
from image_generation import ModerationLabel, Screening

# Rekognition takes at most 5 MiB of inline image bytes (aws-reference.md section 4.2).
MAX_INLINE_BYTES = 5 * 1024 * 1024
JPEG_QUALITY = 90
# botocore would base64-encode the bytes, put the 2.5 MB string through json.dumps and copy it
# again (11 ms an image, 40 % of the service's CPU in bench/); the body is built here directly
# instead, and a one-byte placeholder goes through botocore's own checks and serialiser.
PLACEHOLDER_BYTES = b"\0"


class RekognitionScreener:
    """Flags an image when Rekognition returns any moderation label at or above MinConfidence."""

    def __init__(self, client, min_confidence: float = 50.0):
        self.client = client
        self.min_confidence = min_confidence
        # The body a thread is about to send; per thread, because the client is shared by the pool.
        self._pending = threading.local()
        client.meta.events.register("before-call.rekognition.DetectModerationLabels", self._use_prebuilt_body)

    @classmethod
    def from_settings(cls, settings) -> RekognitionScreener:
        """The screener the settings name, on this process's Rekognition client."""
        from backends.aws_clients import rekognition_client

        return cls(rekognition_client(settings), settings.moderation_min_confidence)

    def screen(self, png: bytes) -> Screening:
        """The verdict on `png`; ScreeningFailed when Rekognition cannot give one."""
        self._pending.body = request_body(inline_image(png), self.min_confidence)
        try:
            answer = self.client.detect_moderation_labels(Image={"Bytes": PLACEHOLDER_BYTES},
                                                          MinConfidence=self.min_confidence)
        except ClientError as error:
            info = error.response.get("Error", {})
            raise ScreeningFailed(f"Rekognition could not screen the image ({info.get('Code')}: "
                                  f"{info.get('Message')}); it was not published", retry_after=5) from error
        except BotoCoreError as error:
            raise ScreeningFailed(f"could not reach Rekognition ({type(error).__name__}); the image was not "
                                  f"published", retry_after=5) from error
        finally:
            self._pending.body = None
        labels = tuple(ModerationLabel(label.get("Name", ""), label.get("ParentName", ""),
                                       float(label.get("Confidence", 0.0)))
                       for label in answer.get("ModerationLabels", []))
        return Screening("flagged", labels) if labels else Screening("clean")


    def _use_prebuilt_body(self, params, **_):
        """botocore hook: swap the placeholder request body for the one built by request_body()."""
        body = getattr(self._pending, "body", None)
        if body is not None:
            params["body"] = body


def request_body(image: bytes, min_confidence: float) -> bytes:
    """DetectModerationLabels' JSON body, built without a decoded copy of the base64 text."""
    return b"".join((b'{"Image":{"Bytes":"', pybase64.b64encode(image), b'"},"MinConfidence":',
                     json.dumps(min_confidence).encode(), b"}"))


def inline_image(png: bytes) -> bytes:
    """The bytes to send: the PNG itself, or a JPEG copy when the PNG is over Rekognition's 5 MiB limit."""
    if len(png) <= MAX_INLINE_BYTES:
        return png
    # Over the limit Rekognition refuses the call, and failing closed would withhold a good image.
    # A JPEG copy keeps what the classifier looks at in a fraction of the bytes; it is halved in size
    # only in the unlikely case that it is still too big.
    from PIL import Image  # imported here: only oversized images pay for Pillow

    try:
        with Image.open(io.BytesIO(png)) as original:
            image = original.convert("RGB")
        while True:
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=JPEG_QUALITY)
            if out.tell() <= MAX_INLINE_BYTES:
                return out.getvalue()
            image = image.reduce(2)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ScreeningFailed("the image could not be re-encoded for screening; it was not published") from error
