"""Answers about the cluster as a whole: capacity, planning, health, alerts,
history, scaling, servers and tokens.

The planning, prediction and scaling answers come from services that grow
new detail often; their models fix the top-level keys and leave the items
below them open (``dict[str, Any]``), described in words.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from apportion.core.model import Health, NodeState
from apportion.server.responses import Documented, Out
from apportion.server.responses.nodes import Stamp, Strings

Open = list[dict[str, Any]]


class HealthzOut(Out):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


class ResourceTotalsOut(Out):
    total: str
    allocated: str
    available: str
    total_base: int
    allocated_base: int
    available_base: int
    allocated_share: float = Field(description="allocated / total, 0 to 1")


class CapacityGroupOut(Out):
    group: str
    nodes: int
    resources: dict[str, ResourceTotalsOut]


class CapacitySummaryOut(Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "group_by": "resource",
                    "groups": [
                        {
                            "group": "gpu",
                            "nodes": 1,
                            "resources": {
                                "gpu": {
                                    "total": "4",
                                    "allocated": "1",
                                    "available": "3",
                                    "total_base": 4,
                                    "allocated_base": 1,
                                    "available_base": 3,
                                    "allocated_share": 0.25,
                                }
                            },
                        }
                    ],
                }
            ]
        }
    )

    group_by: str
    groups: list[CapacityGroupOut]


class FreeBlockOut(Out):
    resource: str
    free: str
    free_base: int
    largest_block: str
    largest_block_base: int
    nodes_with_free: int
    fragmentation_index: float = Field(description="1 - largest block / free")


class ShapeFitOut(Out):
    shape: Strings
    shape_base: dict[str, int]
    fits: int
    fits_if_whole: int = Field(description="how many would fit were the free capacity one node")


class FragmentationOut(Out):
    resources: list[FreeBlockOut]
    shapes: list[ShapeFitOut]
    shapes_from: str = Field(description="'waiting jobs' or 'common shapes'")


class UtilizationOut(Out):
    group_by: str
    window_seconds: float
    now: Stamp
    groups: Open = Field(
        description="per group: its nodes and, per resource, total, "
        "allocated, pending and demand now and over the window"
    )


class ForecastOut(Out):
    group_by: str
    days: float
    history_days: float | None
    step_seconds: float
    now: Stamp
    generated_in_s: float
    forecasts: Open = Field(
        description="per group and resource: capacity, now, the forecast "
        "with intervals, exhaustion, model and back-test error"
    )


class PredictionOut(Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "train",
                    "user": "alice",
                    "command": None,
                    "tier": "default",
                    "confidence": 0.0,
                    "samples": 0,
                    "values": {},
                    "values_base": {},
                    "detail": {},
                    "notes": [],
                    "records": {"matching": 0, "considered": 0},
                }
            ]
        }
    )

    name: str
    user: str
    command: str | None
    tier: str
    confidence: float
    samples: int
    values: Strings
    values_base: dict[str, float]
    detail: dict[str, dict[str, Any]] = Field(
        description="per value: tier, samples, basis, confidence, max_used_before"
    )
    notes: list[str]
    records: dict[str, int]


class HealthReasonOut(Out):
    rule: str
    severity: str
    message: str
    value: float | None
    threshold: float | None
    device: str | None


class HealthChangeOut(Out):
    node: str
    at: float
    previous: Health
    current: Health
    reasons: list[HealthReasonOut]


class NodeHealthOut(Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "node": "n1",
                    "status": "healthy",
                    "reasons": [],
                    "last_heartbeat_at": None,
                    "heartbeat_interval_s": None,
                    "recent_changes": [],
                    "state": "ready",
                }
            ]
        }
    )

    node: str
    status: Health
    reasons: list[HealthReasonOut]
    last_heartbeat_at: float | None
    heartbeat_interval_s: float | None
    recent_changes: list[HealthChangeOut]
    state: NodeState


class HealthChecksOut(Out):
    nodes: list[NodeHealthOut]


class AlertOut(Out):
    fingerprint: str
    rule: str
    labels: Strings
    severity: str
    status: str = Field(description="firing or resolved")
    message: str
    value: float | None
    threshold: float | None
    started_at: float
    last_seen_at: float
    resolved_at: float | None


class AlertsOut(Out):
    alerts: list[AlertOut]
    count: int


class HistoryOut(Out):
    metric: str
    description: str
    window_seconds: float
    step: float
    source: str = Field(description="raw samples or rollups")
    now: float
    series: Open = Field(description="per label set: points, trend and slope")
    truncated: bool


class ScalingOut(Out):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"pools": [], "message": "no node pools are configured"}]}
    )

    pools: Open = Field(
        description="per pool: its decision (or, for /pools, its members, "
        "joining and draining nodes and recent decisions)"
    )
    message: str | None = Field(default=None, description="when no pools are configured")
    interval_s: float | None = Field(default=None, description="/pools: seconds between rounds")


class LeaderOut(Out):
    server_id: str | None
    epoch: int | None
    since: Stamp


class ServerOut(Out):
    id: str
    url: str | None
    version: str | None
    started_at: Stamp
    last_seen: Stamp
    alive: bool
    leader: bool


class ClusterOut(Out):
    leader: LeaderOut
    this_server: str
    servers: list[ServerOut]
    leader_timeout_s: float


class TokenOut(Out):
    id: int | str
    name: str
    role: str
    created_at: Stamp
    expires_at: Stamp | None = Field(default=None, description="a session's end; null: never")


class LoginCodeOut(Out):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "code": "apc_3f9a...", "name": "alice", "role": "user",
        "expires_at": "2026-01-05T10:01:00Z", "expires_in_s": 60.0}]})

    code: str = Field(description="works once, until expires_at")
    name: str
    role: str
    expires_at: Stamp
    expires_in_s: float


class SessionOut(Out):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "token": "ap_77c2...", "name": "alice", "role": "user",
        "expires_at": "2026-01-05T22:00:00Z"}]})

    token: str = Field(description="a session token, good until expires_at")
    name: str
    role: str
    expires_at: Stamp


class TokenCreatedOut(TokenOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "token": "ap_9c1f...",
                    "id": 3,
                    "name": "alice",
                    "role": "user",
                    "created_at": "2026-01-05T10:00:00Z",
                }
            ]
        }
    )

    token: str = Field(description="shown once; keep it")


class TokenListOut(Out):
    tokens: list[TokenOut]


class TokenRevokedOut(Out):
    name: str
    revoked: int


class WhoamiOut(Out):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "alice", "role": "user"}]})

    name: str
    role: str


Healthz = Annotated[dict[str, Any], Documented(HealthzOut)]
LoginCode = Annotated[dict[str, Any], Documented(LoginCodeOut)]
Session = Annotated[dict[str, Any], Documented(SessionOut)]
CapacitySummary = Annotated[dict[str, Any], Documented(CapacitySummaryOut)]
Fragmentation = Annotated[dict[str, Any], Documented(FragmentationOut)]
Utilization = Annotated[dict[str, Any], Documented(UtilizationOut)]
Forecast = Annotated[dict[str, Any], Documented(ForecastOut)]
Prediction = Annotated[dict[str, Any], Documented(PredictionOut)]
NodeHealth = Annotated[dict[str, Any], Documented(NodeHealthOut)]
HealthChecks = Annotated[dict[str, Any], Documented(HealthChecksOut)]
Alerts = Annotated[dict[str, Any], Documented(AlertsOut)]
History = Annotated[dict[str, Any], Documented(HistoryOut)]
Scaling = Annotated[dict[str, Any], Documented(ScalingOut)]
Cluster = Annotated[dict[str, Any], Documented(ClusterOut)]
TokenCreated = Annotated[dict[str, Any], Documented(TokenCreatedOut)]
TokenList = Annotated[dict[str, Any], Documented(TokenListOut)]
TokenRevoked = Annotated[dict[str, Any], Documented(TokenRevokedOut)]
Whoami = Annotated[dict[str, Any], Documented(WhoamiOut)]
