"""Break-glass is scoped to the hospital it was declared for (issue 12, finding 10).

Emergency staff hold an emergency key of every authority, so before this fix a window
opened for an emergency at H001 also released, without a reason or a ledger entry of its
own, the same patient's records held at H002.
"""

from __future__ import annotations

import json

import pytest

from medshare.ledger.types import TxKind
from medshare.service.areas import Area
from medshare.service.errors import InvalidInput

MINUTE = 60_000


def _glass(service, pid):
    return [
        c.tx.body for c in service.ledger.txs(TxKind.BREAK_GLASS) if c.tx.body["patient"] == pid
    ]


def _record_at_h002(service, pid, root) -> str:
    """A record of the (H001) patient that H002 holds: the patient was seen there too."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "glass-h002",
                    "status": "final",
                    "code": {"text": "blood pressure at H002"},
                    "subject": {"reference": f"Patient/{pid}"},
                }
            }
        ],
    }
    path = root / "glass-h002.json"
    path.write_text(json.dumps(bundle))
    report = service.ingest("H002", [path])
    assert report.records == 1, report.rejected
    rid = "Observation/glass-h002"
    assert next(r for r in service.records_of(pid) if r["id"] == rid)["hospital"] == "H002"
    return rid


def test_break_glass_at_one_hospital_does_not_open_another(consortium):
    service, clock, root = consortium
    pid = service.patients()[0]["id"]
    at_h001 = [r["id"] for r in service.records_of(pid) if r["hospital"] == "H001"][:2]
    at_h002 = _record_at_h002(service, pid, root)
    start = clock.now_ms
    try:
        before = len(_glass(service, pid))
        assert service.read("er.sun@H001", at_h001[0], area=Area.EMERGENCY, reason="collapse")
        assert len(_glass(service, pid)) == before + 1

        # Same hospital, inside the window: reused, no second break-glass.
        clock.now_ms += 10 * MINUTE
        assert service.read("er.sun@H001", at_h001[1], area=Area.EMERGENCY).resource
        assert len(_glass(service, pid)) == before + 1

        # Another hospital: the H001 window does not reach it.
        with pytest.raises(InvalidInput, match="reason"):
            service.read("er.sun@H001", at_h002, area=Area.EMERGENCY)
        got = service.read("er.sun@H001", at_h002, area=Area.EMERGENCY, reason="transfer")
        assert b"blood pressure at H002" in got.resource
        glass = _glass(service, pid)
        assert len(glass) == before + 2 and glass[-1]["record"] == at_h002
        assert glass[-1]["reason"] == "transfer"

        # Each window still ends on time.
        clock.now_ms = start + (service.config.break_glass_minutes + 1) * MINUTE
        with pytest.raises(InvalidInput, match="reason"):
            service.read("er.sun@H001", at_h001[0], area=Area.EMERGENCY)
    finally:
        clock.now_ms = start
