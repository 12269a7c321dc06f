"""config.yaml, --set and EDGE_EMOTION__* validated into AppConfig; every problem is one line naming the key path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_app import cli
from edge_app.config import AppConfig, ConfigError, default_device_id, load_config
from edge_app.config_text import UniqueKeyLoader

ROOT = Path(__file__).resolve().parents[1]


def config_error(tmp_path: Path, text: str, overrides: tuple[str, ...] = (), env: dict | None = None) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides, env={} if env is None else env)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_defaults_work_without_a_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config.source.uri == "demo" and config.source.kind == "auto"
    assert config.device.id == default_device_id() and re.fullmatch(r"[A-Za-z0-9_-]+", config.device.id)
    mqtt = config.mqtt
    assert (mqtt.host, mqtt.port, mqtt.prefix, mqtt.qos) == ("localhost", 1883, "emotion", 1)
    assert config.model.path is None and config.aggregate.window_s == 10


def test_each_systemd_instance_gets_its_own_default_device_id(tmp_path, monkeypatch) -> None:
    """edge-emotion@cam0 and @cam1 on one host must not publish under the same topics; device.id still wins."""
    monkeypatch.delenv("EDGE_EMOTION_INSTANCE", raising=False)
    host = load_config(env={}).device.id
    ids = []
    for instance in ("cam0", "cam.1"):
        monkeypatch.setenv("EDGE_EMOTION_INSTANCE", instance)
        ids.append(load_config(env={}).device.id)
    assert ids == [f"{host}-cam0", f"{host}-cam_1"]
    path = tmp_path / "cam0.yaml"
    path.write_text("device:\n  id: door\n")
    assert load_config(path, env={}).device.id == "door"


def test_config_yaml_in_the_current_directory_is_used(tmp_path, monkeypatch) -> None:
    (tmp_path / "config.yaml").write_text("mqtt:\n  port: 1999\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}).mqtt.port == 1999


def test_shipped_config_yaml_holds_exactly_the_defaults() -> None:
    assert load_config(ROOT / "config.yaml", env={}) == AppConfig()


def test_shipped_config_yaml_documents_every_option() -> None:
    """Every option of every section is in the file, and every key sits under a comment of its own group."""
    lines = (ROOT / "config.yaml").read_text().splitlines()
    data = yaml.safe_load("\n".join(lines))
    assert set(data) == set(AppConfig.model_fields)
    for section, model in AppConfig.model_fields.items():
        assert set(data[section]) == set(model.annotation.model_fields), section
    for number, line in enumerate(lines):
        if line.startswith("  ") and not line.strip().startswith("#"):
            above = number - 1
            while lines[above].startswith("  ") and not lines[above].strip().startswith("#"):
                above -= 1  # keys grouped under one comment
            assert lines[above].strip().startswith("#"), f"config.yaml line {number + 1} has no comment: {line!r}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt:\n  port: abc\n", "mqtt.port: expected an integer 1-65535, got 'abc'"),
        ("mqtt:\n  port: 70000\n", "mqtt.port: expected an integer 1-65535, got 70000"),
        ("mqtt:\n  qos: 3\n", "mqtt.qos: expected an integer 0-2, got 3"),
        ("tracking:\n  ema_alpha: 0\n", "tracking.ema_alpha: expected a number > 0 and <= 1, got 0"),
        ("aggregate:\n  window_s: -5\n", "aggregate.window_s: expected a number > 0, got -5"),
        ("runtime:\n  delegate: tpu\n", "runtime.delegate: expected one of cpu, edgetpu, gpu, got 'tpu'"),
        ("source:\n  mirror: sometimes\n", "source.mirror: expected true or false, got 'sometimes'"),
        ("train:\n  widths: [24, x]\n", "train.widths[1]: expected an integer, got 'x'"),
        ("mqtt:\n  tls: true\n", "mqtt.ca_file: required when mqtt.tls is true"),
        ("mqtt: [1, 2]\n", "mqtt: expected a mapping of keys, got a list [1, 2]"),
        ("logging:\n  level: LOUD\n", "logging.level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("device:\n  id: my/cam\n", "device.id: expected letters, digits, '_' or '-'"),
        ("model:\n  classes: [happy, grumpy]\n", "model.classes: unknown emotion class(es) ['grumpy']"),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_key(tmp_path, text, expected) -> None:
    assert config_error(tmp_path, text).startswith(expected)


def test_an_unknown_key_is_named_with_its_path(tmp_path) -> None:
    assert config_error(tmp_path, "mqtt:\n  bogus: 1\n").startswith("mqtt.bogus: unknown key")
    assert config_error(tmp_path, "mqttt:\n  port: 1\n").startswith("mqttt: unknown key")


def test_missing_file_unreadable_yaml_and_a_non_mapping_top_level(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml", env={})
    message = config_error(tmp_path, "mqtt:\n  port: 1883\n  host: [unclosed\n")
    assert "config.yaml" in message and re.search(r"line \d+", message) and "not valid YAML" in message
    assert "expected a mapping of sections at the top level, got a list" in config_error(tmp_path, "- a\n- b\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt:\n  port: 1\n  port: 2\n", ": line 3, column 3: not valid YAML (found duplicate key 'port')"),
        ("mqtt:\n  port: !!int abc\n", ": line 2, column 9: not valid YAML ('abc' is not a valid !!int)"),
        ("mqtt:\n  host: a\x00b\n", ": not valid YAML (unacceptable character #x0000"),
        ("mqtt:\n\tport: 1\n", ": line 2, column 1: not valid YAML (found character '\\t' that cannot start"),
    ],
)
def test_yaml_that_cannot_be_read_names_the_file_line_and_problem(tmp_path, text, expected) -> None:
    assert config_error(tmp_path, text).startswith(f"{tmp_path / 'config.yaml'}{expected}")


def test_a_merge_key_may_be_overridden_without_counting_as_a_duplicate(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  <<: {port: 1, host: broker}\n  port: 2\n")
    assert (load_config(path, env={}).mqtt.port, load_config(path, env={}).mqtt.host) == (2, "broker")


@pytest.mark.parametrize(("text", "expected"), [("0: 1\n", "0: unknown key; known keys: device,"),
                                                ("mqtt:\n  null: 1\n", "mqtt.None: unknown key; known keys: enabled,"),
                                                ('mqtt:\n  "": 1\n', "mqtt.'': unknown key")])
def test_a_key_that_is_not_a_name_is_named_as_written(tmp_path, text, expected) -> None:
    assert config_error(tmp_path, text).startswith(expected)


def test_a_config_file_that_cannot_be_read_is_one_line_naming_it(tmp_path) -> None:
    (tmp_path / "binary.yaml").write_bytes(b"mqtt:\n  host: \xff\xfe\n")
    for path, problem in ((tmp_path / "binary.yaml", "UnicodeDecodeError"), (tmp_path, "IsADirectoryError")):
        with pytest.raises(ConfigError) as caught:
            load_config(path, env={})
        assert str(caught.value).startswith(f"{path}: cannot read the config file ({problem}: ")
        assert "\n" not in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_config_file_without_read_permission_is_one_line_naming_it(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  port: 1883\n")
    path.chmod(0)
    with pytest.raises(ConfigError, match=r"config\.yaml: cannot read the config file \(PermissionError: "):
        load_config(path, env={})


def test_a_password_never_appears_in_errors_or_printed_config(tmp_path) -> None:
    message = config_error(tmp_path, "mqtt:\n  username: u\n  password: [hunter2]\n")
    assert message.startswith("mqtt.password: expected a string") and "hunter2" not in message
    config = load_config(overrides=["mqtt.username=u"], env={"EDGE_EMOTION__MQTT__PASSWORD": "hunter2"})
    assert config.mqtt.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.mqtt)


def test_set_and_environment_overrides_in_order_of_precedence(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  port: 1000\n  host: filehost\n")
    env = {"EDGE_EMOTION__MQTT__PORT": "2000", "EDGE_EMOTION__AGGREGATE__WINDOW_S": "2.5", "OTHER": "x"}
    config = load_config(path, ["mqtt.port=3000", "source.uri=0", "device.id=0123"], env=env)
    assert (config.mqtt.port, config.mqtt.host, config.aggregate.window_s) == (3000, "filehost", 2.5)
    assert config.source.uri == "0" and config.device.id == "0123"  # text fields keep the text as typed
    assert load_config(path, env=env).mqtt.port == 2000
    assert load_config(path, ["model.classes=Happy,sad"], env={}).model.classes == ["happy", "sad"]
    assert load_config(path, ["mqtt.tls=true", "mqtt.ca_file=system"], env={}).mqtt.ca_file == "system"


def test_overrides_of_unknown_or_malformed_keys_are_one_line_errors(tmp_path) -> None:
    assert config_error(tmp_path, "", ("mqtt.bogus=1",)).startswith("mqtt.bogus: unknown key")
    assert config_error(tmp_path, "", env={"EDGE_EMOTION__MQTT__BOGUS": "1"}).startswith("mqtt.bogus: unknown key")
    assert config_error(tmp_path, "", ("mqtt.port.deeper=1",)).startswith("mqtt.port.deeper: unknown key")
    assert config_error(tmp_path, "", ("mqtt.port",)).startswith("--set mqtt.port: expected KEY=VALUE")
    message = config_error(tmp_path, "", env={"EDGE_EMOTION__MQTT__PORT": "abc"})
    assert message.startswith("mqtt.port: expected an integer 1-65535, got 'abc'")
    assert "EDGE_EMOTION__MQTT__PORT" in message


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["demo", "cpu", "fer", "happy", "system", "INFO", "1883", "0.5"]),
)
field_names = sorted({name for section in AppConfig.model_fields.values() for name in section.annotation.model_fields})
keys = st.one_of(st.sampled_from(field_names), st.text(max_size=8), st.integers(-3, 3))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=12)
sections = st.dictionaries(st.sampled_from([*AppConfig.model_fields, "bogus"]),
                           st.dictionaries(keys, values, max_size=5) | values, max_size=6)
override = st.tuples(st.sampled_from([f"{s}.{f}" for s in AppConfig.model_fields for f in field_names[:12]]
                                     + ["mqtt", "a.b.c", ""]), st.text(max_size=10)).map("=".join)


def shown_key(key: object) -> str:
    """A key as error messages print it: control characters escaped so that the message stays one line."""
    text = str(key)
    return (text if text.isprintable() else repr(text)[1:-1]) or "''"


def assert_one_line_naming_where(message: str, path: Path, document: object, overrides: list[str]) -> None:
    """The message is one line that starts with what it is about: the file, a key of the file, or an override."""
    assert message and "\n" not in message and "Traceback" not in message
    starts = [f"{path}: ", "--set "]
    starts += [shown_key(key) for key in document] if isinstance(document, dict) else []
    for item in overrides:  # an override's key, or the first of its parents that is wrong (a: unknown key, for a.b.c)
        parts = item.partition("=")[0].strip().split(".")
        starts += [".".join(parts[:end]) + ":" for end in range(1, len(parts) + 1)]
    assert any(message.startswith(start) for start in starts if start), message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=sections | values, overrides=st.lists(override, max_size=2))
@example(document={}, overrides=["a.b.c="])  # the error names "a", the wrong part of the override's key
def test_the_loader_only_ever_returns_a_config_or_raises_config_error(document, overrides) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(document, allow_unicode=True))
        try:
            config = load_config(path, overrides, env={})
        except ConfigError as exc:
            assert_one_line_naming_where(str(exc), path, document, overrides)
        else:
            assert isinstance(config, AppConfig)


# YAML-ish text: tokens that make mappings, lists, anchors, tags, merges and indentation, in random order
yaml_tokens = [*"mqt:port-[]{}\"' \n\t#&*!|>%@`,?.\\0123abc\x00", "<<: ", "  ", "~", "mqtt:", "port: ", "source:\n  ",
               "\n- ", "!!int ", "&a ", "*a"]
yaml_like = st.lists(st.sampled_from(yaml_tokens), max_size=30).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=yaml_like | st.text(max_size=40) | st.binary(max_size=40))
@example(text=".:")  # a key that is only a dot once read "(top level): unknown key"
@example(text="mqtt:\n  .: 1")
def test_random_yaml_text_gives_a_config_or_one_line_naming_the_file_or_key(text) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:  # only to learn the top-level keys that an error may name
            document = yaml.load(text, Loader=UniqueKeyLoader)
        except (yaml.YAMLError, RecursionError):
            document = None
        try:
            config = load_config(path, env={})
        except ConfigError as exc:
            assert_one_line_naming_where(str(exc), path, document, [])
        else:
            assert isinstance(config, AppConfig)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_EMOTION__")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "edge_app", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_with_a_bad_config_exits_2_with_one_line(tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text("mqtt:\n  port: abc\n")
    result = run_cli(["--config", "bad.yaml", "run"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: mqtt.port: expected an integer 1-65535, got 'abc'"]
    result = run_cli(["run", "--set", "mqtt.bogus=1"], tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: mqtt.bogus: unknown key") and "Traceback" not in result.stderr


@pytest.fixture
def recording_subcommand(tmp_path, monkeypatch):
    """A real subcommand module written to disk, so the dispatcher is exercised end to end."""
    (tmp_path / "recording_subcommand.py").write_text(
        "seen = []\n"
        "def add_arguments(parser):\n    parser.add_argument('--times', type=int, default=1)\n"
        "def main(args, config):\n    seen.append((args.times, config))\n    return 7\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "bench", ("recording_subcommand", "test"))
    monkeypatch.setitem(cli.SUBCOMMANDS, "annotate", ("edge_app.no_such_module", "test"))
    monkeypatch.chdir(tmp_path)
    import recording_subcommand

    yield recording_subcommand
    sys.modules.pop("recording_subcommand", None)


def test_cli_dispatches_with_global_options_before_or_after_the_subcommand(recording_subcommand, capsys) -> None:
    argv = ["--set", "mqtt.port=1884", "bench", "--times", "3", "--set", "mqtt.host=broker", "--log-level", "debug"]
    assert cli.main(argv) == 7
    times, config = recording_subcommand.seen[-1]
    assert times == 3 and config.mqtt.port == 1884 and config.mqtt.host == "broker"
    assert config.logging.level == "DEBUG"


def test_cli_names_a_subcommand_missing_from_this_build(recording_subcommand, capsys) -> None:
    assert cli.main(["annotate"]) == 2
    assert capsys.readouterr().err.strip() == "error: subcommand annotate is not available in this build"


def test_a_key_with_control_characters_still_gives_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text('device:\n  "a\\nb": 1\n')
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("device.a\\nb: unknown key")
