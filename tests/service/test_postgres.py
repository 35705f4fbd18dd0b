"""The service on a real PostgreSQL server: same migrations, same behaviour as SQLite."""

from __future__ import annotations

import json
import os

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from medshare.service import db
from medshare.service.areas import Area
from medshare.service.config import ServiceConfig
from medshare.service.consortium import init
from medshare.service.errors import AccessDenied
from medshare.service.roster import StaffMember

from . import postgres
from .conftest import write_bundle

pytestmark = pytest.mark.slow

if not postgres.available():
    if os.environ.get("CI"):
        raise RuntimeError("CI must have PostgreSQL (apt-get install postgresql)")
    pytest.skip("PostgreSQL server binaries are not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def pg_url():
    with postgres.server() as url:
        yield url


def test_migrations_match_models_on_postgresql(pg_url):
    engine = db.make_engine(pg_url)
    db.migrate(engine)
    with engine.connect() as conn:
        assert conn.dialect.name == "postgresql"
        assert compare_metadata(MigrationContext.configure(conn), db.Base.metadata) == []
    engine.dispose()


def test_service_runs_on_postgresql(pg_url, tmp_path):
    roster = (
        StaffMember("dr.wang@H001", "H001", "03", "physician"),
        StaffMember("dr.zhao@H001", "H001", "04", "physician"),
    )
    config = ServiceConfig(
        data_dir=tmp_path / "data",
        hospitals=("H001",),
        nodes=4,
        replication=1,
        database_url=pg_url,
    )
    with init(config, roster=roster) as service:
        report = service.ingest("H001", [write_bundle(tmp_path, 7, 0, 30)])
        assert report.records >= 20 and not report.rejected
        pid = service.patients()[0]["id"]
        rid = next(r["id"] for r in service.records_of(pid) if r["dept"].startswith("03"))
        got = json.loads(service.read("dr.wang@H001", rid, area=Area.INSTITUTION).resource)
        assert got["id"] == rid.split("/")[1]
        with pytest.raises(AccessDenied):
            service.read("dr.zhao@H001", rid, area=Area.INSTITUTION)
        share = service.share(pid, "family:x", everything=True)
        assert service.read("family:x", rid, area=Area.PERSONAL, share=share).resource
        assert service.verify()["ok"]
    assert not (tmp_path / "data" / "medshare.db").exists()  # nothing went to SQLite
