"""The S3 store: every image written from memory with a conditional put that never overwrites."""

from __future__ import annotations

import random
import time

from botocore.exceptions import BotoCoreError, ClientError

from generation.errors import KeyExists, StoreFailed

# S3 answers 409 ConditionalRequestConflict while another conditional write to the key is in flight
# and asks the caller to retry; botocore does not. A few short waits settle it.
CONFLICT_ATTEMPTS = 4
CONFLICT_BACKOFF_SECONDS = 0.1
SSE_HEADER_VALUES = {"aes256": "AES256", "aws:kms": "aws:kms"}
DEFAULT_URL_SECONDS = 900
KIND_TAG = "aig-kind"


class S3Store:
    """Keeps images in one bucket under one key prefix; a key is never written twice."""

    def __init__(self, client, bucket: str, *, key_prefix: str = "", sse: str = "", kms_key_id: str = "",
                 url_seconds: int = DEFAULT_URL_SECONDS, sleep=time.sleep):
        self.client = client
        self.bucket = bucket
        self.key_prefix = key_prefix
        self.url_seconds = url_seconds
        self.extra_args = encryption_args(sse, kms_key_id)
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings) -> S3Store:
        """The store the settings name, on this process's S3 client."""
        from backends.aws_clients import s3_client

        return cls(s3_client(settings), settings.s3_bucket, key_prefix=settings.s3_key_prefix,
                   sse=settings.s3_sse, kms_key_id=settings.s3_sse_kms_key_id, url_seconds=settings.s3_url_seconds)

    def object_key(self, key: str) -> str:
        """The S3 key of a store key: the configured prefix before it."""
        return self.key_prefix + key

    def put_new(self, key: str, data: bytes, metadata: dict[str, str], content_type: str = "image/png",
                kind: str = "") -> None:
        """Upload `data` at `key` unless an object is there (KeyExists); StoreFailed if S3 would not take it."""
        # The service's own documents carry a tag the bucket's lifecycle rule expires them by
        # (deploy/s3/lifecycle.json); images carry none and are kept.
        tagging = {"Tagging": f"{KIND_TAG}={kind}"} if kind else {}
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                                       ContentType=content_type, IfNoneMatch="*", Metadata=metadata,
                                       **tagging, **self.extra_args)
                return
            except ClientError as error:
                if _is_conflict(error) and attempt < CONFLICT_ATTEMPTS:
                    self._sleep(CONFLICT_BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))
                    continue
                raise self._translate(key, error) from error
            except BotoCoreError as error:
                # botocore has already retried dropped connections and time-outs (standard mode).
                raise StoreFailed(f"could not reach S3 to store {key!r}: {type(error).__name__}") from error

    def _translate(self, key: str, error: ClientError) -> Exception:
        if _code(error) == "PreconditionFailed" or _status(error) == 412:
            # Also what a botocore re-send of our own successful put sees; that orphan is never reported.
            return KeyExists(key)
        return StoreFailed(f"S3 did not store {key!r} in bucket {self.bucket!r} "
                           f"({_code(error) or _status(error)}: {_message(error)})")

    def check(self) -> None:
        """Raise StoreFailed unless the bucket answers a one-key listing under the prefix (s3:ListBucket)."""
        # A listing limited to our prefix is what the IAM policy grants; head_bucket would need
        # s3:ListBucket on the whole bucket.
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key_prefix, MaxKeys=1)
        except ClientError as error:
            raise StoreFailed(f"S3 bucket {self.bucket!r} is not usable ({_code(error)}: {_message(error)})") \
                from error
        except BotoCoreError as error:
            raise StoreFailed(f"could not reach S3: {type(error).__name__}") from error

    def get(self, key: str) -> bytes | None:
        """The bytes at `key`, or None when there is no such object (needs s3:GetObject)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"].read()
        except ClientError as error:
            if _code(error) in ("NoSuchKey", "404") or _status(error) == 404:
                return None
            raise StoreFailed(f"S3 did not return {key!r} ({_code(error)}: {_message(error)})") from error
        except BotoCoreError as error:
            raise StoreFailed(f"could not reach S3 to read {key!r}: {type(error).__name__}") from error

    def delete(self, key: str) -> None:
        """Remove `key` if it is there (needs s3:DeleteObject)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as error:
            raise StoreFailed(f"S3 did not delete {key!r} ({_code(error)}: {_message(error)})") from error
        except BotoCoreError as error:
            raise StoreFailed(f"could not reach S3 to delete {key!r}: {type(error).__name__}") from error

    def address(self, key: str, image_url=None) -> dict[str, str]:
        """The object's full `s3_uri` and, unless URLs are off, a presigned GET `url` for a UI to show it."""
        # `images` keeps the caller's keys; the full address (with the key prefix) goes beside them.
        found = {"s3_uri": f"s3://{self.bucket}/{self.object_key(key)}"}
        if self.url_seconds:
            found["url"] = self.presigned_url(key, self.url_seconds)
        return found

    def listing(self, prefix: str, limit: int = 1000) -> list[tuple[str, float]]:
        """(key, last modified) of up to `limit` objects directly under `prefix` (needs s3:ListBucket)."""
        try:
            answer = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.object_key(prefix.rstrip("/") + "/"),
                                                 Delimiter="/", MaxKeys=limit)
        except (ClientError, BotoCoreError) as error:
            raise StoreFailed(f"could not list {prefix!r}: {type(error).__name__}") from error
        return [(item["Key"][len(self.key_prefix):], item["LastModified"].timestamp())
                for item in answer.get("Contents", [])]

    def published(self, key: str) -> bytes | None:
        """None: S3 serves its images itself, through their presigned URLs."""
        return None

    def presigned_url(self, key: str, expires: int = DEFAULT_URL_SECONDS) -> str:
        """A SigV4 GET URL for `key`, valid `expires` seconds (at most 7 days; S3 refuses longer)."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.object_key(key)}, ExpiresIn=expires)


def encryption_args(sse: str, kms_key_id: str) -> dict:
    """put_object's encryption arguments for the lowercased AIG_S3_SSE value; empty keeps the bucket default."""
    if not sse:
        return {}
    args = {"ServerSideEncryption": SSE_HEADER_VALUES[sse]}
    if sse == "aws:kms":
        args["SSEKMSKeyId"] = kms_key_id
    return args


def _is_conflict(error: ClientError) -> bool:
    return _code(error) == "ConditionalRequestConflict" or _status(error) == 409


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _status(error: ClientError) -> int:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


def _message(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Message", "")
