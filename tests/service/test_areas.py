"""Areas: which institution scope a department's records and staff belong to."""

from __future__ import annotations

import pytest

from medshare.records.departments import Taxonomy, UnknownDepartment
from medshare.service import areas
from medshare.service.areas import Area, AreaTemplates


def _with_added_top_levels() -> Taxonomy:
    return (
        Taxonomy.default()
        .add("60A", None, "新增甲科", "Added A")
        .add("60B", None, "新增乙科", "Added B")
    )


def test_hospital_added_top_level_codes_get_their_own_scope() -> None:
    """Regression (issue 12, finding 9): the scope used to be the code's first two
    characters, so ``60A`` and ``60B`` shared one and 60A's staff read 60B's records."""
    taxonomy = _with_added_top_levels()
    assert areas.top_department("60A", taxonomy) == "60A"
    assert areas.top_department("60B", taxonomy) == "60B"
    templates = AreaTemplates()
    staff_60a = areas.staff_attributes("H001", "60A", "physician", 0, taxonomy)
    policy_60a = templates.policy(Area.INSTITUTION, hospital="H001", dept="60A", epoch=0)
    policy_60b = templates.policy(Area.INSTITUTION, hospital="H001", dept="60B", epoch=0)
    assert areas.satisfied_by(policy_60a, staff_60a)
    assert not areas.satisfied_by(policy_60b, staff_60a)


def test_a_sub_department_belongs_to_its_top_level_ancestor() -> None:
    taxonomy = Taxonomy.default().add("030401", "0304", "心衰专病门诊", "Heart-failure clinic")
    assert areas.top_department("030401", taxonomy) == "03"
    assert areas.top_department("03", taxonomy) == "03"
    assert "dept:03" in areas.staff_attributes("H001", "030401", "nurse", 2, taxonomy)


def test_an_unknown_department_has_no_scope() -> None:
    with pytest.raises(UnknownDepartment):
        areas.top_department("ZZ9", Taxonomy.default())
