"""Test helpers shipped with qo: a local S3 server for tests, benchmarks and dev."""
