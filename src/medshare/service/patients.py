"""The patient's own key: Shamir recovery of the 32-byte seed, and the department list.

A patient who loses their phone loses their seed; DESIGN §3.3 asks for a recovery
option. The seed is split with SLIP-39 (:mod:`medshare.crypto.recovery`) into shares for
trusted contacts; any threshold of them rebuilds it. Restoring checks the rebuilt seed
against the patient's *published* block keys before it replaces anything, so a wrong or
mixed set of shares is refused instead of silently giving the patient a useless seed.

Hospitals extend the department catalogue with their own sub-departments; the additions
are kept in ``departments-extra.csv`` in the data directory and loaded by every command.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medshare.crypto import hkac, recovery
from medshare.ledger.app import published as published_keys
from medshare.records.departments import Taxonomy, TaxonomyError
from medshare.service.errors import InvalidInput

EXTRA_DEPARTMENTS = "departments-extra.csv"


class PatientKeyMixin:
    """Seed recovery and the department catalogue (part of :class:`~.api.MedShare`)."""

    def recovery_split(self, patient_id: str, threshold: int, shares: int) -> list[str]:
        """SLIP-39 mnemonics for the patient's seed: any ``threshold`` of ``shares`` rebuild it."""
        with self.sessions() as session:
            self._patient(session, patient_id)
        try:
            return recovery.split_seed(self.wallets.seed(patient_id), threshold, shares)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(str(exc)) from None

    def recovery_restore(self, patient_id: str, mnemonics: Sequence[str]) -> dict[str, Any]:
        """Rebuild the seed from shares, check it against the published keys, store it."""
        with self.sessions() as session:
            patient = self._patient(session, patient_id)
            published = dict(patient.block_publics)
        try:
            seed = recovery.recover_seed(mnemonics)
        except recovery.RecoveryError as exc:
            raise InvalidInput(f"cannot rebuild the seed: {exc}") from None
        if not published:
            raise InvalidInput(f"patient {patient_id} has no published key to check against")
        for block in published:
            # Against the ledger, not the row: the digests the patient's own identity
            # published, which an edited database cannot change.
            name = published_keys.block_key(patient_id, int(block))
            mine = published_keys.digest(hkac.block_public(seed, int(block)).to_bytes())
            if self.ledger.published(name) != mine:
                raise InvalidInput(
                    f"these shares rebuild a different seed than patient {patient_id}'s "
                    "(its keys published on the ledger do not match); nothing was changed"
                )
        self.wallets.save_seed(patient_id, seed)
        return {"patient": patient_id, "restored": True, "checked_blocks": len(published)}

    def add_department(self, code: str, parent: str | None, name_zh: str, name_en: str) -> None:
        """A hospital's sub-department (e.g. ``030401`` under ``0304``), kept for every command."""
        try:
            extended = self.taxonomy.add(code, parent, name_zh, name_en)
        except (ValueError, KeyError, TaxonomyError) as exc:
            raise InvalidInput(f"cannot add department {code!r}: {exc}") from None
        extra = extended.to_csv(exclude=Taxonomy.default())
        (self.config.data_dir / EXTRA_DEPARTMENTS).write_text(extra, encoding="utf-8")
        self.taxonomy = extended

    def departments(self) -> list[dict[str, str | None]]:
        return [
            {"code": d.code, "parent": d.parent, "name_en": d.name_en, "name_zh": d.name_zh}
            for d in self.taxonomy
        ]


def load_taxonomy(data_dir: Path) -> Taxonomy:
    """The default catalogue plus this data directory's additions."""
    path = data_dir / EXTRA_DEPARTMENTS
    base = Taxonomy.default()
    if not path.is_file():
        return base
    rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    return base.extend(list(rows))
