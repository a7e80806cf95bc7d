"""The plantwatch scoring service on BentoML: thin wiring over ``plantwatch.serving``.

Run: ``bentoml serve services.service:Detector`` (or ``make serve`` / ``plantwatch serve``) from a
project folder (or with ``PLANTWATCH_ROOT`` set). Binds 127.0.0.1 unless ``--host`` says otherwise.

The model is NOT baked into the service: at start (and whenever ``registry/production.json``
changes) the service loads the version the registry pointer names, hash-verified and smoke-tested
(it must score a probe reading), and swaps it in without a restart. ``/readyz`` answers 503 until a
verified model is loaded.

Endpoints (all API calls are POST with a JSON body):
    /score     {"readings": [...]} -> {"request_id", "model_version", "window", "results": [...]}
    /model     {} -> active version, registry pointer, reload state, model card summary
    /feedback  a reviewer verdict (``Authorization: Bearer $<serve.token_env>``)
    /healthz /livez /readyz /metrics /docs.json   (BentoML built-ins)
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from starlette.responses import Response

from plantwatch import serving
from plantwatch.config import load_params
from plantwatch.paths import ProjectPaths
from plantwatch.review import FeedbackPayload

PATHS = ProjectPaths.at()
PARAMS = load_params(PATHS.params)
SERVE = PARAMS.serve
#: Built from the data contract's sensors, so OpenAPI lists every sensor and unknown keys are 400.
ScoreRequest = serving.build_request_model(PARAMS.data.sensor_names, SERVE)
#: The APIs take the raw JSON body and validate it in plantwatch.serving (in the worker thread, with
#: error answers that never echo the input); /docs.json still documents the real models.
JsonBody = Annotated[str, ContentType(serving.JSON_MEDIA_TYPE)]


logging.getLogger(serving.BENTOML_API_LOGGER).addFilter(serving.ClientErrorLogFilter())

#: The worker's runtime, for the ASGI middlewares (built before the service instance exists).
_RUNNING: dict[str, serving.ScoringApp] = {}


def _response(reply: serving.Reply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=serving.JSON_MEDIA_TYPE)


@bentoml.service(
    http={"host": SERVE.host, "port": SERVE.port},
    workers=SERVE.workers,
    traffic=serving.traffic_config(SERVE),
)
class Detector:
    """Anomaly scores, decisions (normal/review/alert), rules and explanations for telemetry."""

    def __init__(self) -> None:
        serving.tune_gc(SERVE)
        self.app = serving.build_app(PARAMS, PATHS, request_model=ScoreRequest)
        _RUNNING["app"] = self.app
        self.app.start()

    def __is_ready__(self) -> bool:
        return self.app.ready

    @bentoml.on_shutdown
    def close(self) -> None:
        self.app.close()

    @bentoml.api(route="/score", output_spec=serving.ScoreResponse)
    def score(self, body: JsonBody, /) -> Response:
        """Score a window of readings; one result per reading, in request order."""
        return _response(self.app.score_body(body))

    @bentoml.api(route="/model", output_spec=serving.ModelInfo)
    def model(self, body: JsonBody, /) -> Response:
        """The version being served, what the registry pointer names, and its model card summary."""
        return _response(self.app.model_body(body))

    @bentoml.api(route="/feedback", output_spec=serving.FeedbackReply)
    def feedback(self, body: JsonBody, /, ctx: bentoml.Context) -> Response:
        """A reviewer's verdict on a queued item (``id``) or on any reading (``asset`` + ``timestamp``)."""
        reply = self.app.feedback_body(body, dict(ctx.request.headers))
        ctx.response.status_code = reply.status  # with a ctx parameter BentoML takes the status from it
        return _response(reply)


ROUTE_DOCS = {
    "/score": serving.RouteDoc(ScoreRequest, serving.ScoreResponse, errors=(503,)),
    "/model": serving.RouteDoc(serving.EmptyRequest, serving.ModelInfo, errors=(503,), body_required=False),
    "/feedback": serving.RouteDoc(FeedbackPayload, serving.FeedbackReply, errors=(401, 403, 404)),
}


def _active() -> serving.LoadedModel | None:
    app = _RUNNING.get("app")
    return None if app is None else app.holder.current


def _openapi() -> dict[str, Any]:
    model = _active()
    assets = list(model.bundle.assets) if model is not None else None
    return serving.patch_openapi(Detector.openapi_spec.asdict(), ROUTE_DOCS, assets)


def _served_version() -> str | None:
    model = _active()
    return None if model is None else model.tag


Detector.add_asgi_middleware(serving.RequestGuard, max_body_bytes=SERVE.max_body_bytes, json_paths=ROUTE_DOCS)
Detector.add_asgi_middleware(serving.OpenAPIOverride, spec=_openapi, key=_served_version)
