"""The Redis and PostgreSQL lab fixtures are real servers, and private ones start and stop.

CI machines of this kind run shared servers on 127.0.0.1; a developer's machine may not,
and then the fixtures start private instances. Both paths are exercised here.
"""

from __future__ import annotations

import uuid

import psycopg2
import redis

from tests.lab.services import (
    PrivatePostgres,
    PrivateRedis,
    create_database,
    drop_database,
    postgres_answers,
    redis_answers,
)


def test_redis_fixture_is_a_real_redis(redis_url):
    client = redis.Redis.from_url(redis_url)
    key = f"sms-lab-{uuid.uuid4().hex}"
    try:
        assert client.set(key, b"\x00\xffbytes", ex=60)
        assert client.get(key) == b"\x00\xffbytes"
    finally:
        client.delete(key)
        client.close()


def test_postgres_fixture_is_a_fresh_real_database(postgres_url):
    dsn = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT current_database(), version()")
        name, version = cursor.fetchone()
        assert name.startswith("sms_test_") and version.startswith("PostgreSQL")
    connection.close()


def test_private_redis_starts_and_stops(tmp_path):
    server = PrivateRedis(tmp_path).start()
    try:
        assert redis_answers(server.port)
    finally:
        server.stop()
    assert not redis_answers(server.port)


def test_private_postgres_starts_serves_and_stops():
    server = PrivatePostgres().start()
    try:
        url = create_database(server.port, "sms_private_check")
        dsn = url.replace("postgresql+psycopg2://", "postgresql://")
        connection = psycopg2.connect(dsn)
        with connection.cursor() as cursor:
            cursor.execute("SELECT inet_server_port()")
            assert cursor.fetchone()[0] == server.port
        connection.close()
        drop_database(server.port, "sms_private_check")
    finally:
        server.stop()
    assert not postgres_answers(server.port)
    assert not server.directory.exists()
