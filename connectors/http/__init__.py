"""HTTP adapters: a service's handlers behind the sidecar, called with CloudEvents."""

from connectors.http.cloudevents import (
    PROJECTION_ANSWER_SCHEMA,
    STEP_ANSWER_SCHEMA,
    apply_changes,
    event_document,
)
from connectors.http.service import HttpProjectionHandler, HttpServiceClient, HttpStepAction
from connectors.http.settings import ServiceSettings

__all__ = [
    "PROJECTION_ANSWER_SCHEMA",
    "STEP_ANSWER_SCHEMA",
    "HttpProjectionHandler",
    "HttpServiceClient",
    "HttpStepAction",
    "ServiceSettings",
    "apply_changes",
    "event_document",
]
