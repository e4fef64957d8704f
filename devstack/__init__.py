"""The local development stack: embedded PostgreSQL 18 + pgvector, a private Redis when none
answers, the Procfile under honcho, and a sample corpus. Used by `make run`, `make demo`,
the tests and the benchmarks; never part of the production package or image.
"""
