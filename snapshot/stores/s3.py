"""The snapshot store on S3 (or anything that speaks it: moto, MinIO), through boto3.

This is the one module that talks to S3: every botocore/boto3 error is converted here, with
``raise ... from e``, into warmstart's errors:

- a missing key → :class:`SnapshotNotFoundError`;
- an endpoint that cannot be reached → :class:`StoreUnreachableError`, naming the endpoint
  (boto3 is set to fail fast: a short connect timeout and few retries);
- anything else → :class:`StoreError`.

Uploads use boto3's managed transfer (multipart, parts in parallel threads); downloads are
ranged GETs that the cache issues in parallel itself.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, NoReturn

import boto3
import botocore.exceptions as boto_errors
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from warmstart.infra.errors import SnapshotNotFoundError, StoreError, StoreUnreachableError
from warmstart.snapshot.stores.base import (
    ProgressCallback,
    SnapshotStore,
    check_key,
    check_max_bytes,
    check_prefix,
    check_range,
    too_large,
)

MiB = 1024 * 1024
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_UNREACHABLE = (
    boto_errors.EndpointConnectionError,
    boto_errors.ConnectTimeoutError,
    boto_errors.ReadTimeoutError,
    boto_errors.ConnectionClosedError,
    boto_errors.ProxyConnectionError,
)


class S3Store(SnapshotStore):
    """Objects under ``s3://bucket/prefix``.

    Args:
        bucket: the bucket name.
        prefix: a key prefix inside the bucket ("" for the bucket root).
        endpoint_url: a non-AWS endpoint (moto, MinIO), or None for AWS.
        region: the bucket's region.
        connect_timeout_s / read_timeout_s / max_attempts: fail fast on a dead endpoint.
        multipart_threshold_bytes / multipart_part_bytes / upload_concurrency: the managed
            upload's settings (files above the threshold go up in parallel parts).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 2,
        multipart_threshold_bytes: int = 16 * MiB,
        multipart_part_bytes: int = 16 * MiB,
        upload_concurrency: int = 8,
    ) -> None:
        if not bucket:
            raise StoreError("an S3 store needs a bucket name: use s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_prefix(self.prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        config = Config(
            region_name=region,
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max(10, upload_concurrency * 2),
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        try:
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        except (boto_errors.BotoCoreError, ValueError) as e:
            raise StoreError(f"cannot create an S3 client for {self.describe()}: {e}") from e
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_part_bytes,
            max_concurrency=upload_concurrency,
            use_threads=True,
        )

    # --- naming -----------------------------------------------------------------------------

    def describe(self) -> str:
        where = self.endpoint_url or f"AWS S3 ({self.region})"
        return f"s3://{self.bucket}/{self.prefix} at {where}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # --- errors -----------------------------------------------------------------------------

    def _raise(self, e: Exception, action: str, key: str) -> NoReturn:
        """Convert a boto3/botocore error into a warmstart error (the only place that does)."""
        if isinstance(e, _UNREACHABLE):
            endpoint = self.endpoint_url or f"the AWS S3 endpoint for {self.region}"
            raise StoreUnreachableError(
                f"cannot reach S3 endpoint {endpoint} to {action} {key!r} "
                f"(bucket {self.bucket!r}): {e}. Check WARMSTART_S3_ENDPOINT_URL and that the "
                "service is running."
            ) from e
        if isinstance(e, boto_errors.NoCredentialsError):
            raise StoreError(
                f"no AWS credentials to {action} {key!r} in {self.describe()}: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)"
            ) from e
        if isinstance(e, boto_errors.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES:
                raise SnapshotNotFoundError(f"{key!r} does not exist in {self.describe()}") from e
            if code == "NoSuchBucket":
                raise StoreError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS'}: "
                    "create it, fix WARMSTART_STORE_URL, or for a local try-out run `warmstart services`, "
                    "which starts Redis and S3 with the bucket created"
                ) from e
            raise StoreError(f"S3 refused to {action} {key!r} in {self.describe()}: {code}: {e}") from e
        raise StoreError(f"S3 failed to {action} {key!r} in {self.describe()}: {e}") from e

    def _call(self, action: str, key: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(**kwargs)
        except (boto_errors.BotoCoreError, boto_errors.ClientError) as e:
            self._raise(e, action, key)

    # --- operations -------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (demo and tests).

        Raises:
            StoreUnreachableError / StoreError: as for any call.
        """
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except boto_errors.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) not in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                self._raise(e, "check bucket", self.bucket)
        except boto_errors.BotoCoreError as e:
            self._raise(e, "check bucket", self.bucket)
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except boto_errors.ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",):
                self._raise(e, "create bucket", self.bucket)
        except boto_errors.BotoCoreError as e:
            self._raise(e, "create bucket", self.bucket)

    def put_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        try:
            self._client.upload_file(
                str(path), self.bucket, self._key(key), Config=self._transfer, Callback=progress
            )
        except S3UploadFailedError as e:
            cause = e.__cause__ or e.__context__
            if isinstance(cause, (boto_errors.BotoCoreError, boto_errors.ClientError)):
                self._raise(cause, "upload", key)
            raise StoreError(f"upload of {key!r} to {self.describe()} failed: {e}") from e
        except (boto_errors.BotoCoreError, boto_errors.ClientError) as e:
            self._raise(e, "upload", key)
        except OSError as e:
            raise StoreError(f"cannot read {path} to upload it as {key!r}: {e}") from e

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("write", key, "put_object", Bucket=self.bucket, Key=self._key(key), Body=data)

    def _read_body(self, response: dict[str, Any], key: str, amount: int | None = None) -> bytes:
        try:
            return response["Body"].read(amount)
        except (boto_errors.BotoCoreError, OSError) as e:
            if isinstance(e, boto_errors.BotoCoreError):
                self._raise(e, "read", key)
            raise StoreError(f"reading {key!r} from {self.describe()} failed: {e}") from e

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        check_max_bytes(max_bytes)
        response = self._call("read", key, "get_object", Bucket=self.bucket, Key=self._key(key))
        if max_bytes is None:
            return self._read_body(response, key)
        # The size from the response headers, before the body is read.
        length = int(response.get("ContentLength") or 0)
        if length > max_bytes:
            with contextlib.suppress(Exception):
                response["Body"].close()  # drop the connection's unread body
            raise too_large(self, key, length, max_bytes)
        data = self._read_body(response, key, max_bytes + 1)  # in case the header lied
        if len(data) > max_bytes:
            raise too_large(self, key, len(data), max_bytes)
        return data

    def get_range(self, key: str, start: int, end: int) -> bytes:
        check_range(start, end)
        if end == start:
            if self.size(key) is None:
                raise SnapshotNotFoundError(f"{key!r} does not exist in {self.describe()}")
            return b""
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}"
            )
        except boto_errors.ClientError as e:
            # A range that starts past the end is "416 InvalidRange": the object is shorter.
            if e.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            self._raise(e, "read", key)
        except boto_errors.BotoCoreError as e:
            self._raise(e, "read", key)
        return self._read_body(response, key)[: end - start]

    def size(self, key: str) -> int | None:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except boto_errors.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES:
                return None
            self._raise(e, "stat", key)
        except boto_errors.BotoCoreError as e:
            self._raise(e, "stat", key)
        return int(response["ContentLength"])

    def list_keys(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            ):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (boto_errors.BotoCoreError, boto_errors.ClientError) as e:
            self._raise(e, "list", prefix or "/")
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._call("delete", key, "delete_object", Bucket=self.bucket, Key=self._key(key))
