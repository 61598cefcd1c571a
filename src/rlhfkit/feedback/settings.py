"""The web app's settings, in one place: `rlhfkit serve` options map onto them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AppSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    https_only: bool = Field(False, description="mark the session cookie Secure (serve behind TLS)")
    api_docs: bool = Field(
        False, description="serve the OpenAPI schema at /openapi.json (off: it maps the attack surface)"
    )
    max_body_bytes: int = Field(1 << 20, gt=0, description="largest request body; item uploads have their own limit")
    max_upload_bytes: int = Field(64 << 20, gt=0, description="largest item file uploaded on /admin")
    login_failures_per_account: int = Field(5, gt=0, description="failed sign-ins per name before a pause")
    login_failures_per_address: int = Field(20, gt=0, description="failed sign-ins per client address before a pause")
    login_window_s: float = Field(900.0, gt=0, description="the window those failures are counted in, seconds")
