"""Make the run's bucket on a fresh S3 endpoint (MinIO in kind, or the chart's optional MinIO),
waiting for the server to come up: `python -m xwin.artifacts.bucket --endpoint URL --bucket NAME`.
Credentials come from the standard AWS environment (a Secret), never from arguments."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("xwin.bucket")


def ensure_bucket(endpoint_url: str | None, bucket: str, region: str | None = None,
                  wait_s: float = 300.0) -> bool:
    """Create `bucket` unless it exists; True if it was created. Retries while the endpoint is
    not reachable yet (a server still starting)."""
    import boto3
    from botocore.exceptions import ClientError, EndpointConnectionError
    from tenacity import (
        Retrying,
        before_sleep_log,
        retry_if_exception_type,
        stop_after_delay,
        wait_exponential,
    )

    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1")
    for attempt in Retrying(
        retry=retry_if_exception_type((EndpointConnectionError, ConnectionError)),
        wait=wait_exponential(multiplier=0.5, max=10),
        stop=stop_after_delay(wait_s),
        before_sleep=before_sleep_log(log, logging.INFO),
        reraise=True,
    ):
        with attempt:
            try:
                s3.head_bucket(Bucket=bucket)
                return False
            except ClientError as e:
                if e.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            s3.create_bucket(Bucket=bucket)
            return True
    return False  # unreachable: the loop returns or raises


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=None, help="S3 endpoint URL (MinIO); default AWS")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--region", default=None)
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    created = ensure_bucket(args.endpoint, args.bucket, args.region, args.wait)
    print(f"bucket {args.bucket}: {'created' if created else 'exists'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
