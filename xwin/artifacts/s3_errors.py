"""Which S3 failures are worth another attempt, the retry policy (tenacity), and the clear
errors every other failure becomes.

S3Store switches botocore's own retries off (and s3transfer's download re-attempts), so the one
policy here decides, and `StoreConfig.max_attempts` counts every attempt of an S3 call or file
transfer. Messages name the endpoint and the bucket, never a credential.
"""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.exceptions import RetriesExceededError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from xwin.artifacts.store import ArtifactError, StoreUnavailable, StoreUnreachable

log = logging.getLogger(__name__)

# what S3, MinIO and friends answer when they want the client to slow down or try again
TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
}
CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
}
CREDENTIAL_HINT = (
    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN, or AWS_PROFILE) in "
    "the environment, and that they may s3:ListBucket, s3:GetObject, s3:PutObject, "
    "s3:DeleteObject and s3:AbortMultipartUpload on the bucket (without s3:ListBucket, S3 "
    "answers 403 instead of 404 for a key that does not exist)"
)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(error.get("Code") or status or "unknown")
    return type(exc).__name__


def http_status(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) in ("NoSuchKey", "404", "NotFound")


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx, and connections that failed, closed or timed out."""
    if isinstance(exc, ClientError):
        status = http_status(exc)
        return error_code(exc) in TRANSIENT_CODES or status == 429 or status >= 500
    if isinstance(exc, SSLError):  # a certificate problem does not fix itself
        return False
    # RetriesExceededError: s3transfer gave up on a broken download stream after its one try
    return isinstance(
        exc,
        (
            BotoConnectionError,
            HTTPClientError,
            IncompleteReadError,
            RetriesExceededError,
            socket.timeout,
            ConnectionError,
        ),
    )


def retrying(what: str, max_attempts: int, backoff_s: float, max_backoff_s: float) -> Retrying:
    """Exponential backoff with jitter, at most max_attempts attempts, transient errors only."""

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "S3 %s failed (%s), attempt %d of %d; retrying in %.1f s",
            what,
            error_code(exc) if exc else "?",
            state.attempt_number,
            max_attempts,
            wait,
        )

    return Retrying(
        stop=stop_after_attempt(max_attempts),
        # backoff_s, 2x, 4x ... up to max_backoff_s, plus jitter so parallel parts spread out
        wait=wait_exponential(multiplier=backoff_s, max=max_backoff_s) + wait_random(0, backoff_s),
        retry=retry_if_exception(is_transient),
        before_sleep=log_retry,
        reraise=True,
    )


def describe_endpoint(endpoint_url: str | None, region: str | None) -> str:
    """The endpoint as shown in messages, without any user:password part of the URL."""
    if not endpoint_url:
        return f"AWS S3 ({region or 'default region'})"
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def store_error(
    exc: BaseException, *, what: str, endpoint: str, bucket: str, attempts: int
) -> ArtifactError | None:
    """The StoreUnavailable a failure means for the user, or None to let it through as is."""
    where = f"bucket {bucket!r} at {endpoint}"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return StoreUnavailable(
            f"no usable AWS credentials for {where} while {what}: {CREDENTIAL_HINT}"
        )
    if isinstance(exc, SSLError):
        return StoreUnavailable(f"TLS failed for {where} while {what}: {exc}")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code == "NoSuchBucket":
            return StoreUnavailable(
                f"S3 bucket {bucket!r} does not exist at {endpoint} (while {what}); create it "
                "or fix store.bucket"
            )
        if code in CREDENTIAL_CODES or http_status(exc) == 403:
            return StoreUnavailable(
                f"S3 refused the credentials for {where} while {what} ({code}: {message}); "
                f"{CREDENTIAL_HINT}"
            )
        if is_transient(exc):
            return StoreUnreachable(
                f"S3 {where} kept failing while {what} ({code}: {message}) after {attempts} "
                "attempts"
            )
        return None
    if is_transient(exc):
        return StoreUnreachable(
            f"cannot reach S3 {where} while {what} ({error_code(exc)}) after {attempts} "
            "attempts; is the endpoint up and store.endpoint_url right?"
        )
    return None
