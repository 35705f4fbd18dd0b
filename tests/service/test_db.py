"""The schema comes from Alembic migrations, and they match the models exactly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from medshare.service import db
from medshare.service.config import ConfigError, ServiceConfig


def test_migrations_create_the_models_schema(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate(engine)
    db.migrate(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.Base.metadata)
    assert diff == []
    tables = set(inspect(engine).get_table_names())
    assert {"records", "wraps", "area_keys", "grants", "alembic_version"} <= tables


def test_schema_head_is_the_newest_migration(tmp_path):
    from importlib import resources

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("medshare.service") / "migrations")
    )
    assert ScriptDirectory.from_config(config).get_current_head() == db.SCHEMA_HEAD
    engine = db.make_engine(f"sqlite:///{tmp_path / 'h.db'}")
    assert db.schema_revision(engine) is None
    db.migrate(engine, "0001")
    assert db.schema_revision(engine) == "0001"
    db.migrate(engine)  # an older schema is still upgraded
    assert db.schema_revision(engine) == db.SCHEMA_HEAD


def test_sqlite_runs_with_foreign_keys_and_wal(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_config_round_trip_and_errors(tmp_path):
    config = ServiceConfig(data_dir=tmp_path, hospitals=("H001", "H002"), nodes=4)
    config.save()
    assert ServiceConfig.load(tmp_path) == config
    with pytest.raises(ConfigError, match="medshare init"):
        ServiceConfig.load(tmp_path / "missing")
    with pytest.raises(ConfigError, match="unique"):
        ServiceConfig(data_dir=tmp_path, hospitals=("H001", "H001"))
    with pytest.raises(ConfigError, match="committee"):
        ServiceConfig(data_dir=tmp_path, nodes=3, committee=4)
    (tmp_path / "medshare.json").write_text('{"version": 1, "colour": "red"}')
    with pytest.raises(ConfigError, match="unknown settings"):
        ServiceConfig.load(tmp_path)


def test_policy_templates_come_from_the_config(tmp_path):
    from medshare.service.areas import Area, AreaTemplates

    custom = "hospital:{hospital} and dept:{dept} and role:physician and epoch:{epoch}"
    config = ServiceConfig(data_dir=tmp_path, policy_templates={"institution": custom})
    config.save()
    loaded = ServiceConfig.load(tmp_path)
    templates = AreaTemplates.from_config(loaded.policy_templates)
    text = templates.policy(Area.INSTITUTION, hospital="H001", dept="03", epoch=2)
    assert "role:nurse" not in text and "epoch:2" in text
    with pytest.raises(ValueError, match="epoch"):
        AreaTemplates.from_config({"institution": "hospital:{hospital}"})
    with pytest.raises(ValueError, match="unknown policy template"):
        AreaTemplates.from_config({"personal": "x and epoch:{epoch}"})
    with pytest.raises(ValueError):
        AreaTemplates.from_config({"research": "ethics:{study} and and epoch:{epoch}"})
