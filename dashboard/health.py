"""Stage health: the workers' heartbeats (who holds which partitions of which stage's topic, how far behind each
is) and the accepted requests still waiting for their row."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.settings import get_settings
from dashboard import queries as q


@st.cache_data(ttl=q.CACHE_TTL_S, show_spinner=False)
def heartbeats(dsn: str) -> pd.DataFrame:
    return q._fetch(dsn, "SELECT worker_id, host, pid, started_at, extract(epoch FROM now() - beat_at) AS beat_age_s,"
                         " assignment, lag FROM worker_heartbeats ORDER BY worker_id")


@st.cache_data(ttl=q.CACHE_TTL_S, show_spinner=False)
def pending_requests(dsn: str) -> pd.DataFrame:
    return q._fetch(dsn, "SELECT count(*) AS pending, extract(epoch FROM now() - min(accepted_at)) AS oldest_s"
                         " FROM accepted_requests WHERE state = 'pending'")


def stage_table(beats: pd.DataFrame, fresh_s: float) -> pd.DataFrame:
    """One row per topic: partitions held by live workers, their lag summed, and how many live workers hold it.
    Workers whose heartbeat is older than ``fresh_s`` are counted as gone."""
    rows: dict[str, dict] = {}
    for beat in beats.itertuples():
        if beat.beat_age_s > fresh_s:
            continue
        for topic, partitions in (beat.assignment or {}).items():
            row = rows.setdefault(topic, {"topic": topic, "partitions held": set(), "workers": 0, "lag": 0})
            row["partitions held"] |= set(partitions)
            row["workers"] += 1
        for topic, partitions in (beat.lag or {}).items():
            row = rows.setdefault(topic, {"topic": topic, "partitions held": set(), "workers": 0, "lag": 0})
            row["lag"] += sum(int(n) for n in partitions.values())
    table = pd.DataFrame([{**row, "partitions held": len(row["partitions held"])}
                          for _, row in sorted(rows.items())], columns=["topic", "partitions held", "workers", "lag"])
    return table


def stage_health_view(dsn: str) -> None:
    st.header("Stage health and consumer lag")
    fresh_s = get_settings().heartbeat_fresh_s
    beats = heartbeats(dsn)
    pending = pending_requests(dsn).iloc[0]
    live = beats[beats["beat_age_s"] <= fresh_s] if not beats.empty else beats
    cols = st.columns(3)
    cols[0].metric("Live workers", len(live), help=f"heartbeat within {fresh_s:g} s")
    cols[1].metric("Accepted, no row yet", int(pending["pending"] or 0),
                   help="accepted requests the pipeline has not recorded yet (the reconciler republishes or "
                        "expires them)")
    oldest = pending["oldest_s"]
    cols[2].metric("Oldest waiting", "–" if oldest is None or pd.isna(oldest) else f"{float(oldest):.1f} s")
    if beats.empty:
        st.info("No worker has sent a heartbeat: start one with `python -m stream_processors worker`.", icon="ℹ️")
        return
    st.subheader("Per topic (live workers)")
    st.caption("Lag: messages behind per topic, summed over partitions, as each worker last saw it (the high "
               "watermark of its last fetch minus the offset it has committed).")
    st.dataframe(stage_table(beats, fresh_s), hide_index=True, use_container_width=True)
    st.subheader("Workers")
    shown = beats.assign(state=["live" if age <= fresh_s else "gone" for age in beats["beat_age_s"]],
                         lag=[sum(sum(int(n) for n in parts.values()) for parts in (lag or {}).values())
                              for lag in beats["lag"]],
                         beat_age_s=beats["beat_age_s"].astype(float).round(1))
    st.dataframe(shown[["worker_id", "state", "host", "pid", "started_at", "beat_age_s", "lag"]], hide_index=True,
                 use_container_width=True)
