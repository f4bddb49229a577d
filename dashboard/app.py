"""The router's analytics dashboard: does routing pay, and did quality hold?

    streamlit run dashboard/app.py --server.port 8501

Reads Postgres at ``ROUTER_PG_DSN`` (or ``PG_DSN``). The view is chosen in the sidebar and kept in the
URL with the date range (``?view=latency&from=2026-01-01&to=2026-01-31``), so a link opens the same figures.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import streamlit as st

# `streamlit run dashboard/app.py` puts dashboard/ first on sys.path, not the project root.
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
if _PROJECT_ROOT not in sys.path:
    sys.path.insert(0, _PROJECT_ROOT)

from core.settings import Settings, get_settings  # noqa: E402
from dashboard import queries as q  # noqa: E402
from dashboard import views  # noqa: E402
from dashboard.health import stage_health_view  # noqa: E402
from dashboard.online import experiments_view  # noqa: E402

DATABASE_VIEWS: dict[str, tuple[str, Callable[[str, q.Filters], None]]] = {
    "overview": ("Overview", views.overview),
    "mix": ("Model mix", views.model_mix),
    "latency": ("Latency", views.latency),
    "quality": ("Quality vs cost", views.quality),
    "escalations": ("Escalations and fallbacks", views.escalations),
    "explorer": ("Request explorer", views.explorer),
}
DATABASE_VIEWS["experiments"] = ("Experiments (A/B)", experiments_view)
OFFLINE_VIEW = "offline"
BUDGETS_VIEW = "budgets"
HEALTH_VIEW = "health"  # needs no request rows: workers and the pending backlog exist before any answer
VIEW_TITLES = {slug: title for slug, (title, _) in DATABASE_VIEWS.items()} | {OFFLINE_VIEW: "Offline evaluation",
                                                                                BUDGETS_VIEW: "Spend vs budget",
                                                                                HEALTH_VIEW: "Stage health and lag"}


def choose_view() -> str:
    """Sidebar navigation, mirrored in the ``view`` query parameter."""
    slugs = list(VIEW_TITLES)
    requested = st.query_params.get("view", slugs[0])
    if "view" not in st.session_state:
        st.session_state["view"] = requested if requested in VIEW_TITLES else slugs[0]
    slug = st.sidebar.radio("View", slugs, format_func=VIEW_TITLES.get, key="view")
    st.query_params["view"] = slug
    return slug


def choose_filters(dsn: str) -> q.Filters | None:
    """Date range, model, difficulty and tenant filters; ``None`` when the database holds nothing yet."""
    bounds = q.data_bounds(dsn)
    if bounds is None:
        return None
    first, last = bounds
    choices = q.filter_choices(dsn)
    st.sidebar.header("Filters")
    if "date_range" not in st.session_state:
        st.session_state["date_range"] = _range_from_url(first, last)
    picked = st.sidebar.date_input("Date range (UTC)", min_value=first, max_value=last, key="date_range")
    start, end = _date_range(picked, first, last)
    # Kept in the URL with the view, so a link opens the same figures.
    st.query_params["from"], st.query_params["to"] = start.isoformat(), end.isoformat()
    models = st.sidebar.multiselect("Model", choices["model"], key="models",
                                    help="The model that answered (Latency: the model called; Quality: the graded model).")
    difficulties = st.sidebar.multiselect("Predicted difficulty", choices["difficulty"], key="difficulties")
    tenants = st.sidebar.multiselect("Tenant", choices["tenant"], key="tenants")
    if st.sidebar.button("Refresh data", help=f"Figures are cached for {q.CACHE_TTL_S} s."):
        q.clear_caches()
        st.rerun()
    return q.Filters(start=start, end=end, models=tuple(models), difficulties=tuple(difficulties),
                     tenants=tuple(tenants))


def _range_from_url(first: date, last: date) -> tuple[date, date]:
    """The ``from``/``to`` query parameters (ISO dates), clamped to the data; the whole data range otherwise."""
    try:
        start = date.fromisoformat(st.query_params.get("from", first.isoformat()))
        end = date.fromisoformat(st.query_params.get("to", last.isoformat()))
    except ValueError:
        return first, last
    start, end = max(first, min(start, last)), max(first, min(end, last))
    return (start, end) if start <= end else (first, last)


def _date_range(picked: object, first: date, last: date) -> tuple[date, date]:
    # While the user is picking, the widget holds only the first date of the range.
    if isinstance(picked, tuple | list):
        if len(picked) == 2:
            return picked[0], picked[1]
        if len(picked) == 1:
            return picked[0], picked[0]
        return first, last
    if isinstance(picked, date):
        return picked, picked
    return first, last


def signed_in(settings: Settings) -> bool:
    """``dashboard_auth = "oidc"``: Streamlit's own sign-in (``st.login``, an OpenID Connect provider configured
    in ``.streamlit/secrets.toml``), optionally limited to ``dashboard_allowed_emails``. ``"none"``: open, which
    is why the dashboard binds to loopback by default."""
    if settings.dashboard_auth == "none":
        return True
    if not st.user.get("is_logged_in", False):
        st.header("Router analytics")
        st.info("Sign in to see the router's spend and requests.", icon="🔒")
        st.button("Sign in", on_click=st.login, key="sign_in")
        return False
    allowed = {email.lower() for email in settings.dashboard_allowed_emails}
    if allowed and str(st.user.get("email", "")).lower() not in allowed:
        st.error("This account may not open the router's dashboard.")
        st.button("Sign out", on_click=st.logout, key="sign_out")
        return False
    st.sidebar.button("Sign out", on_click=st.logout, key="sign_out")
    return True


def main() -> None:
    st.set_page_config(page_title="Router analytics", page_icon="💸", layout="wide")
    settings = get_settings()
    if not signed_in(settings):
        return
    slug = choose_view()
    st.sidebar.caption(f"Figures cached for {q.CACHE_TTL_S} s · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")

    if slug == OFFLINE_VIEW:
        views.offline(settings.dashboard_reports_dir)
        return
    dsn = settings.pg_dsn
    if not dsn:
        st.error("No database configured: set `ROUTER_PG_DSN` (or `PG_DSN`) to the router's Postgres DSN.")
        return
    if slug == BUDGETS_VIEW:
        try:
            views.budgets(dsn)
        except psycopg.errors.UndefinedTable:
            st.error("The database has no budget tables yet: run `python -m sql.migrate`.")
        return
    if slug == HEALTH_VIEW:
        try:
            stage_health_view(dsn)
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
            st.error("The database has no heartbeat tables yet: run `python -m sql.migrate`.")
        return
    try:
        filters = choose_filters(dsn)
    except (psycopg.OperationalError, TimeoutError) as exc:
        st.error(f"Cannot reach the router's database: {exc}")
        return
    except psycopg.errors.UndefinedTable:
        st.error("The database has no router tables yet: run `python -m sql.migrate`.")
        return
    title, render = DATABASE_VIEWS[slug]
    if filters is None:
        st.header(title)
        st.info(
            "The database holds no requests yet. Start the router and send it traffic (`./scripts/demo.sh` "
            "replays recorded prompts through the whole pipeline); figures appear here as requests complete.",
            icon="ℹ️",
        )
        return
    simulated = q.simulated_requests(dsn, filters)
    if simulated:
        st.warning(f"Simulated timestamps: {simulated:,} requests in this range are demo traffic whose times were "
                   "spread over past days (`--simulate-days`); their trends show the demo, not real time.", icon="🕒")
    render(dsn, filters)


if __name__ == "__main__":
    main()
