"""The test lab: real servers (smbd, sshd, Redis, PostgreSQL, Celery workers) started and
stopped by the tests themselves. Shared by tests/ and bench/."""
