"""Scope collisions between departments (areas.top_department) and revocation reach with
odd epoch attributes (areas.could_open): resisted.

* Department codes are case-sensitive ASCII alphanumerics and no top-level code can be a
  prefix of another, so two departments never share an institution scope or a ``dept:``
  attribute (``60a`` vs ``60A``, a short ``6`` or ``60`` over ``60A``).
* ``could_open`` must say yes for every scope a key opens at *any* epoch version of its
  policy — whatever epoch attributes the key carries (several, unparsable, padded,
  negative, Unicode digits, huge): otherwise revocation would leave that scope's KEK.
"""

from __future__ import annotations

import pytest

from medshare.records.departments import Taxonomy, TaxonomyError
from medshare.service import areas
from medshare.service.areas import Area, AreaTemplates


def test_resisted_case_and_prefix_variants_never_share_a_scope():
    taxonomy = (
        Taxonomy.default()
        .add("60A", None, "甲", "Added A")
        .add("60a", None, "乙", "Added a")
        .add("60A1", "60A", "丙", "Added A sub")
    )
    for capture in ("6", "60", "60A"):
        with pytest.raises(TaxonomyError):
            taxonomy.add(capture, None, "捕", "Capture")
    with pytest.raises(TaxonomyError):
        Taxonomy.default().add("60A", None, "甲", "A").extend(
            [{"code": "60", "parent": "", "name_zh": "捕", "name_en": "Capture"}]
        )
    tops = {code: areas.top_department(code, taxonomy) for code in ("60A", "60a", "60A1")}
    assert tops == {"60A": "60A", "60a": "60a", "60A1": "60A"}
    templates = AreaTemplates()
    staff = areas.staff_attributes("H001", "60A1", "nurse", 0, taxonomy)
    for other in ("60a", "69", "06"):
        text = templates.policy(Area.INSTITUTION, hospital="H001", dept=other, epoch=0)
        assert not areas.satisfied_by(text, staff), other
    own = templates.policy(Area.INSTITUTION, hospital="H001", dept="60A", epoch=0)
    assert areas.satisfied_by(own, staff)


BASE = ("hospital:H001", "dept:03", "role:nurse")
ODD_EPOCHS = [
    ("epoch:3", "epoch:5"),
    ("epoch:x", "epoch:4"),
    ("epoch:x",),
    ("epoch:04",),
    ("epoch: 4",),
    ("epoch:-1",),
    ("epoch:1_0",),
    ("epoch:\uff14",),  # fullwidth 4: int() reads it as 4
    ("epoch:" + "9" * 5000,),  # beyond int()'s digit limit
    (),
]


@pytest.mark.parametrize("epochs", ODD_EPOCHS)
def test_resisted_could_open_covers_every_epoch_a_key_can_open(epochs):
    attrs = (*BASE, *epochs)
    current = AreaTemplates().policy(Area.INSTITUTION, hospital="H001", dept="03", epoch=7)
    versions = [areas.set_epoch(current, e) for e in range(-2, 12)] + [current]
    versions += [
        areas.set_epoch(current, int(a.removeprefix("epoch:")))
        for a in epochs
        if a.removeprefix("epoch:").isascii()
        and a.removeprefix("epoch:").lstrip("-").isdigit()
        and len(a) < 100
    ]
    opens_some = any(areas.satisfied_by(v, attrs) for v in versions)
    if opens_some:
        assert areas.could_open(current, attrs), attrs
