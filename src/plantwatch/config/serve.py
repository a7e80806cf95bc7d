"""``serve:`` block — the HTTP scoring service and offline batch scoring.

Limits here bound what one request may cost the service (size, count, string length); the reload
and inference-log settings trade freshness against per-request latency.
"""

from __future__ import annotations

from pydantic import Field, PositiveInt

from plantwatch.config.base import StrictModel


class ServeConfig(StrictModel):
    host: str = "127.0.0.1"
    port: PositiveInt = 3000
    #: Most readings one ``POST /score`` request may carry (more -> 400).
    max_readings: PositiveInt = 10_000
    #: Largest request body in bytes (more -> 413, checked before the JSON is parsed).
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    #: Longest accepted asset name; bounds the cost of a hostile request's strings.
    max_asset_chars: PositiveInt = 128
    #: Largest accepted |sensor value|. Far beyond any physical limit (those are the rules' job:
    #: out-of-limit readings are scored and flagged), it keeps the feature math finite.
    max_abs_value: float = Field(default=1e12, gt=0.0)
    #: Validation problems listed in a 400 answer (the count of all of them is always given).
    max_error_details: PositiveInt = 20
    #: Name of the environment variable holding the token for state-changing endpoints.
    token_env: str = "PLANTWATCH_API_TOKEN"
    #: How often the service re-reads the production pointer (promotion/rollback without restart).
    reload_poll_s: float = Field(default=1.0, gt=0.0)
    #: After a failed load of a production version, wait this long before trying that version again.
    reload_retry_s: float = Field(default=30.0, gt=0.0)
    #: Append every scored request to the inference log (monitoring reads it).
    inference_log: bool = True
    #: The service writes the inference log in the background: at most this many seconds late ...
    log_flush_s: float = Field(default=2.0, gt=0.0)
    #: ... or as soon as this many scored rows are waiting (bounds memory under load).
    log_flush_rows: PositiveInt = 50_000
    #: Worker processes of the service (each holds its own copy of the model).
    workers: PositiveInt = 1
    #: API requests the service admits at once (queued or running, split evenly over workers);
    #: more get 429 at once instead of piling up behind a slow model. Health probes and /metrics
    #: are not counted. null = no limit.
    max_concurrency: PositiveInt | None = 32
    #: After each model load, move every live object out of the cyclic GC's sight (``gc.freeze``):
    #: no full-heap collection stalls in the request path (see ``serving.ModelHolder``).
    freeze_gc: bool = True
    #: Allocations between young-generation collections in the service process (Python's default
    #: is 700). A 1,000-reading request allocates ~100k short-lived objects that reference counting
    #: frees anyway; a larger threshold makes full collections (the p99 stalls) ~70x rarer.
    #: null = Python's default.
    gc_gen0_threshold: PositiveInt | None = 50_000
    #: A request still unanswered after this many seconds gets 504 (BentoML's traffic timeout).
    request_timeout_s: float = Field(default=60.0, gt=0.0)
