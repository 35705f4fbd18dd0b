"""Shared synthetic data for the records tests (generated once per session, never mutated)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from medshare.records import fhir, synthetic

SEED = 20240601


@pytest.fixture(scope="session")
def bundle_json() -> dict[str, Any]:
    """A Synthea-style transaction bundle with ~60 clinical resources (read-only)."""
    return synthetic.generate_bundle(SEED, 0, records=60)


@pytest.fixture
def bundle_copy(bundle_json: dict[str, Any]) -> dict[str, Any]:
    """A private copy a test may change."""
    return copy.deepcopy(bundle_json)


@pytest.fixture(scope="session")
def parsed(bundle_json: dict[str, Any]) -> list[fhir.Resource]:
    return list(fhir.iter_bundle(bundle_json))
