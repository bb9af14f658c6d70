"""The pieces of `stockout dev` that decide before anything starts."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from devtools import dev
from devtools.embedded import EmbeddedServerError, free_port


def test_env_file_round_trip_owner_only(tmp_path: Path) -> None:
    path = tmp_path / ".stockout" / "env"
    values = {"API_URL": "http://127.0.0.1:8000", "API_KEY": "sk_abc_def"}
    dev.write_env_file(path, values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dev.read_env_file(path) == values
    assert dev.read_env_file(tmp_path / "missing") == {}


def test_a_taken_port_names_the_option_that_moves_it() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        api, sandbox, postgres = (free_port() for _ in range(3))
        ports = dev.Ports(api=api, sandbox=sandbox, postgres=postgres, redis=taken)
        with pytest.raises(dev.DevError, match=f"port {taken} .*Redis.*--redis-port N"):
            dev.check_ports(ports, "127.0.0.1")
    dev.check_ports(dev.Ports(*[free_port() for _ in range(4)]), "127.0.0.1")


def test_a_pid_file_counts_only_while_its_process_lives(tmp_path: Path) -> None:
    pid_file = tmp_path / "dev.pid"
    assert dev.running_instance(pid_file) is None
    pid_file.write_text(json.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:8000"}))
    assert dev.running_instance(pid_file) == "http://127.0.0.1:8000"
    pid_file.write_text(json.dumps({"pid": 2**22 + 7, "url": "http://127.0.0.1:8000"}))
    assert dev.running_instance(pid_file) is None
    pid_file.write_text("garbage")
    assert dev.running_instance(pid_file) is None


def test_missing_servers_are_one_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Path:
        raise EmbeddedServerError("no servers")

    monkeypatch.setattr(dev, "postgres_bin_dir", missing)
    with pytest.raises(dev.DevError) as caught:
        dev.check_extras()
    assert "pip install -r requirements-dev.lock" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_key_from_elsewhere_is_not_reused() -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    assert not dev.key_still_valid(unreachable, "sk_abc_def", ("jobs:read",))
    assert not dev.key_still_valid(unreachable, "", ("jobs:read",))


def test_a_valid_key_needs_every_scope(service_env: dict[str, str]) -> None:
    import psycopg

    from tests.support.factories import api_key

    db = service_env["DATABASE_URL"]
    key = api_key("jobs:read", "events:write")
    assert dev.key_still_valid(db, key, ("jobs:read", "events:write"))
    assert not dev.key_still_valid(db, key, ("jobs:read", "jobs:write"))
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now()")
    assert not dev.key_still_valid(db, key, ("jobs:read",))
