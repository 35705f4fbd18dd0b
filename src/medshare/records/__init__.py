"""Clinical records: FHIR R4 ingest, the department taxonomy, classification, canonical bytes.

Modules (import them directly; this package re-exports nothing so that importing
``medshare.records.departments`` does not load the FHIR models):

* :mod:`~medshare.records.departments` — the department tree (《医疗机构诊疗科目名录》) and
  its FHIR CodeSystem;
* :mod:`~medshare.records.fhir` — the only importer of ``fhir.resources`` (release R4B);
* :mod:`~medshare.records.references` — reference parsing, patient/encounter fields;
* :mod:`~medshare.records.classify` — which department a resource belongs to, and why;
* :mod:`~medshare.records.canonical` — the one byte form and the salted ledger digest;
* :mod:`~medshare.records.blobstore` — encrypted blobs, content-addressed and replicated;
* :mod:`~medshare.records.synthetic` — seeded Synthea-style test data.
"""
