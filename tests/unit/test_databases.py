"""The one parameter table per database engine: TOML in, Connection out, one-line errors."""

from __future__ import annotations

import tomllib
from typing import Any

import attrs
import pytest

from recipes import apps
from recipes.databases import mysql, postgresql
from recipes.errors import ConfigError
from recipes.recipe import converter, error_lines, make_params, param, params_dict

TABLES = [(postgresql, "postgres"), (mysql, "root")]


@attrs.frozen
class Uses:
    """A recipe's parameters as a new recipe would declare them: false, true or a table."""

    pg: bool | postgresql.Params = param(False, "PostgreSQL")
    my: bool | mysql.Params = param(False, "MySQL")


@pytest.mark.parametrize(("module", "default_user"), TABLES)
def test_table_from_toml_gives_the_modules_connection(module: Any, default_user: str) -> None:
    text = 'host = "db.internal"\nport = 5433\nuser = "looker"\npassword_env = "DBPW"\ndatabase = "looker"\n'
    params = converter.structure(tomllib.loads(text), module.Params)
    assert params.connection() == module.Connection(
        host="db.internal", port=5433, user="looker", password_env="DBPW", database="looker"
    )
    empty = converter.structure({}, module.Params)
    assert empty.connection() == module.Connection()
    assert empty.user == default_user


def test_bool_or_table_hook_takes_true_false_and_both_tables() -> None:
    text = 'pg = true\n[my]\nhost = "127.0.0.1"\ndatabase = "looker"\n'
    uses = converter.structure(tomllib.loads(text), Uses)
    assert uses.pg is True
    assert uses.my == mysql.Params(host="127.0.0.1", database="looker")
    uses = converter.structure(tomllib.loads("my = false\n[pg]\nport = 6432\n"), Uses)
    assert uses.my is False
    assert uses.pg == postgresql.Params(port=6432)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[pg]\nport = 70000", "x: pg.port: must be a port number from 1 to 65535, got 70000"),
        ('[my]\nport = "3306"', "x: my.port: expected an integer, got '3306'"),
        ('[pg]\npassword_env = "hunter2!"', "x: pg.password_env: must be an environment variable name"),
        ('[my]\ndatabase = "a b"', "x: my.database: must be a database name"),
        ('[pg]\ndatabase = "-oops"', "x: pg.database: must be a database name"),
        (
            '[pg]\nhots = "db"',
            "x: pg: unknown keys (hots); known keys: host, port, user, password_env, database",
        ),
        ('my = "yes"', "x: my: expected true, false or a table, got 'yes'"),
    ],
)
def test_bad_table_is_one_line_naming_the_key(toml: str, expected: str) -> None:
    with pytest.raises(Exception) as info:
        converter.structure(tomllib.loads(toml), Uses)
    line = error_lines(info.value, "x")
    assert line.startswith(expected)
    assert "\n" not in line


def test_django_reports_a_bad_table_key_in_one_line() -> None:
    recipe = apps.get("django")
    with pytest.raises(ConfigError) as info:
        make_params(recipe, {"postgres": {"host": "db", "port": 0}}, "config web1")
    assert str(info.value) == (
        "config web1: postgres.port: must be a port number from 1 to 65535, got 0 (see `recipes show django`)"
    )


@pytest.mark.parametrize("key", ["postgres", "mysql"])
def test_unset_database_is_not_recorded_and_a_set_one_is(key: str) -> None:
    recipe = apps.get("django")
    plain = params_dict(make_params(recipe, {key: {"host": "db"}}, "t"))
    assert plain[key] == {
        "host": "db",
        "port": None,
        "user": "postgres" if key == "postgres" else "root",
        "password_env": None,
    }
    one = params_dict(make_params(recipe, {key: {"host": "db", "database": "app"}}, "t"))
    assert one[key]["database"] == "app"
    # What a plan or manifest records structures back to the same table.
    assert make_params(recipe, one, "t") == make_params(recipe, {key: {"host": "db", "database": "app"}}, "t")


def test_postgresql_one_database_uses_pg_dump_and_no_role_filter() -> None:
    conn = postgresql.Params(host="db", password_env="PGPW", database="govern").connection()
    dump = postgresql.dump(conn)
    assert dump.command.script.startswith('PGPASSWORD="$PGPASSWORD" pg_dump --host=db ')
    assert dump.command.script.endswith(" --create --dbname=govern")
    load = postgresql.load(conn)
    assert "CREATE ROLE" not in load.command.script
    assert "--dbname=postgres" in load.command.script
    assert load.check is not None and "--dbname=govern" in load.check.script
    assert "PGPW" not in dump.command.script  # the variable's name travels as a secret, not argv
    whole = postgresql.Params(host="db").connection()
    assert "pg_dumpall" in postgresql.dump(whole).command.script
    assert "CREATE ROLE" in postgresql.load(whole).command.script


def test_mysql_one_database_uses_databases_without_accounts() -> None:
    conn = mysql.Params(host="db", password_env="MYPW", database="looker").connection()
    script = mysql.dump(conn).command.script
    assert script.endswith("--single-transaction --routines --events --databases looker")
    assert "--all-databases" not in script and "--flush-privileges" not in script
    whole = mysql.dump(mysql.Params().connection()).command.script
    assert "--all-databases" in whole and "--flush-privileges" in whole
