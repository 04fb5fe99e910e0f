"""Migration from Clinomic v1 (MongoDB): read a live database or a mongodump (``source``), map its documents to
records of this platform without I/O (``mapping``), write them with their audit events (``writer``), and
account for every document (``report``); ``run`` ties them together (docs/v1-migration.md)."""
