"""The `store` section of the pipeline config: where artifacts live."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from xwin.core.config import StrictModel


class StoreConfig(StrictModel):
    """Where artifacts live. Credentials never go here: boto3 reads them from the standard AWS
    environment (AWS_ACCESS_KEY_ID, ...), which a Kubernetes Secret fills in a cluster."""

    kind: Literal["local", "s3"] = "local"
    root: Path = Field(Path(".xwin/store"), description="local backend: the store's folder")
    endpoint_url: str | None = Field(None, description="s3: custom endpoint (MinIO, moto)")
    bucket: str | None = Field(None, description="s3: bucket name")
    prefix: str = Field("xwin", description="s3: key prefix inside the bucket")
    region: str | None = Field(None, description="s3: region name")
    max_attempts: int = Field(5, ge=1, description="retries on throttling, 5xx, connection errors")
    multipart_chunk_mb: int = Field(64, ge=5, description="s3: multipart part size")
