"""Configuration loading and secret handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from ironworks.config import load_config
from ironworks.db.secrets import MASK, SecretBox, load_or_create_key, mask
from ironworks.errors import ConfigError


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('state_dir = "/from/file"\n[api]\nport = 7000\nhost = "127.0.0.2"\n[conductor]\nworkers = 4\n')
    cfg = load_config(f, environ={"IRONWORKS_API_PORT": "7100"}, overrides={"api": {"host": None}})
    assert cfg.api.port == 7100 and cfg.api.host == "127.0.0.2" and cfg.conductor.workers == 4
    assert cfg.state_dir == "/from/file"
    cfg = load_config(f, environ={}, overrides={"api": {"port": 7200}})
    assert cfg.api.port == 7200


def test_state_dir_default_and_env(tmp_path: Path) -> None:
    assert load_config(None, environ={"IRONWORKS_STATE_DIR": "/s"}).state_dir == "/s"
    cfg = load_config(None, environ={"XDG_STATE_HOME": str(tmp_path)})
    assert cfg.state_dir == str(tmp_path / "ironworks")
    assert cfg.database_url == f"sqlite:///{tmp_path / 'ironworks' / 'ironworks.sqlite'}"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[api]\nprot = 1\n", {}, "Unknown configuration key api.prot"),
        ("[api]\nport = 'x'\n", {}, "api.port has an invalid value"),
        ("[api\n", {}, "not valid TOML"),
        ("", {"IRONWORKS_CONDUCTOR_AUTOMATED_CLEAN": "perhaps"}, "automated_clean"),
        ("bogus = 1\n", {}, "Unknown configuration key 'bogus'"),
    ],
)
def test_config_errors_say_what_is_wrong(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(f, environ=env)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_seal_reveal_mask_roundtrip() -> None:
    box = SecretBox(SecretBox.generate_key())
    data = {"ipmi_password": "pw", "address": "a", "nested": {"auth_token": 123}, "none_password": None}
    sealed = box.seal(data)
    assert sealed["address"] == "a" and sealed["ipmi_password"].startswith("fernet:")
    assert "pw" not in str(sealed) and sealed["none_password"] is None
    assert box.seal(sealed) == sealed  # sealing twice is harmless
    assert box.reveal(sealed) == data
    assert mask(sealed) == {
        "ipmi_password": MASK,
        "address": "a",
        "nested": {"auth_token": MASK},
        "none_password": None,
    }


def test_wrong_key_is_a_clear_error() -> None:
    sealed = SecretBox(SecretBox.generate_key()).seal({"password": "x"})
    with pytest.raises(ConfigError, match="secret key changed"):
        SecretBox(SecretBox.generate_key()).reveal(sealed)
    with pytest.raises(ConfigError, match="not a valid Fernet key"):
        SecretBox("short")


def test_key_created_once_with_private_mode(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "state")
    assert (tmp_path / "state" / "secret.key").stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path / "state") == key
    assert load_or_create_key(tmp_path / "state", "configured") == "configured"


def test_schema_head_constant_matches_migrations() -> None:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from ironworks.db.engine import MIGRATIONS_DIR, SCHEMA_HEAD

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD
