"""A parked request's notice: kept by the bridge only while someone waits, and turned into 503 + Retry-After (not a
timeout) by /generate and the gateway when the caller's own timeout passes."""

from __future__ import annotations

from datetime import timedelta

from core.messages import ParkedNotice, utcnow
from core.settings import Settings
from ingest.api.routes.openai_chat import timeout_error
from ingest.bridge import GenerateTimeout, KafkaBridge


def _notice(request_id: str, in_s: float = 7.9) -> ParkedNotice:
    now = utcnow()
    return ParkedNotice(request_id=request_id, retry_at=now + timedelta(seconds=in_s),
                        deadline_at=now + timedelta(minutes=5), parks=2, error="small: 503")


def test_the_bridge_keeps_a_notice_only_for_a_request_someone_waits_for() -> None:
    bridge = KafkaBridge(Settings(_env_file=None))
    bridge._deliver(_notice("nobody-waits").to_bytes(), [("type", b"parked")])
    assert bridge._timeout("nobody-waits", 2).parked is None
    bridge._streams["waited"] = None  # a waiting stream (only its presence matters here)
    bridge._deliver(_notice("waited").to_bytes(), [("type", b"parked")])
    timeout = bridge._timeout("waited", 2)
    assert timeout.parked is not None and timeout.parked.parks == 2
    bridge._deliver(b"not json", [("type", b"parked")])  # unreadable: ignored, nothing raised


def test_a_parked_timeout_is_503_with_retry_after_in_openai_shape() -> None:
    error = timeout_error(GenerateTimeout("r1", 2, parked=_notice("r1")))
    assert error.status == 503 and error.code == "models_unavailable" and error.type == "server_error"
    assert error.headers["Retry-After"] == "8" and "parked" in error.message and "GET /requests/r1" in error.message
    plain = timeout_error(GenerateTimeout("r2", 2))
    assert plain.status == 504 and "Retry-After" not in plain.headers
