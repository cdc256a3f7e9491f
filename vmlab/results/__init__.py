"""Run directories, the SQLite index, and import of foreign fio JSON."""
