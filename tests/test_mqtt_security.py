"""Authentication and TLS against a real mosquitto with a password file and certificates made in the test.

Each refusal is one line that says what is wrong (authentication, the broker's certificate, the client's
certificate), and no password ever reaches a log line, even at DEBUG with paho's own log.
"""

from __future__ import annotations

import logging
import subprocess

import pytest
from mqtt_helpers import make_certificates, publisher, subscriber, wait_until, windows

from edge_app.config import ConfigError, load_config
from edge_app.publish.mqtt import NOT_AUTHORISED, MqttError, MqttPublisher

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def secured(mosquitto, tmp_path):
    """A broker that wants a password from the password file and speaks only TLS; returns (broker, certificates)."""
    certs = make_certificates(tmp_path)
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "sensor", PASSWORD], check=True,
                   capture_output=True)
    broker = mosquitto(f"allow_anonymous false\npassword_file {passwords}\n"
                       f"cafile {certs['ca.crt']}\ncertfile {certs['server.crt']}\nkeyfile {certs['server.key']}")
    return broker, certs


def tls_login(ca_file, password: str = PASSWORD):
    """Configure a test subscriber's paho client for the secured broker."""
    def configure(client) -> None:
        client.tls_set(ca_certs=str(ca_file))
        client.username_pw_set("sensor", password)
    return configure


def test_credentials_and_tls_deliver_a_window_and_no_secret_reaches_the_logs(secured, clients, caplog):
    broker, certs = secured
    caplog.set_level(logging.DEBUG)
    sub = subscriber(clients, broker, ["emotion/testcam/#"], configure=tls_login(certs["ca.crt"]))
    config = load_config(overrides=[f"mqtt.host={broker.host}", f"mqtt.port={broker.port}", "mqtt.username=sensor",
                                    "mqtt.tls=true", f"mqtt.ca_file={certs['ca.crt']}", "mqtt.discovery=false",
                                    "mqtt.reconnect_min_s=0.1", "mqtt.reconnect_max_s=0.5"],
                         env={"EDGE_EMOTION__MQTT__PASSWORD": PASSWORD})
    pub = MqttPublisher.from_config(config.mqtt, "testcam")  # the password travels as a pydantic SecretStr
    clients.append(pub)
    assert wait_until(lambda: pub.connected), pub.last_error
    for message in windows(2):
        pub.publish_emotions(message)
    assert sub.wait_for(lambda: sub.seqs("emotion/testcam/emotions") == [1, 2])
    wrong = publisher(clients, broker, username="sensor", password="wrong-" + PASSWORD, tls=True,
                      ca_file=certs["ca.crt"], client_id="wrong")
    assert wait_until(lambda: wrong.last_error is not None, timeout=5)
    assert wrong.last_error == NOT_AUTHORISED and not wrong.connected
    pub.close(timeout=2.0)
    assert sub.wait_for(lambda: sub.on("emotion/testcam/status")[-1:] == [b"offline"])

    assert "paho: Sending CONNECT" in caplog.text, "paho's own packet log must be part of what is checked"
    assert caplog.text.count(NOT_AUTHORISED) == 1, "a refusal is logged once, not once per reconnect"
    logged = "\n".join([caplog.text, *(str(record.args) for record in caplog.records), repr(config)])
    assert PASSWORD not in logged


def test_a_wrong_ca_is_a_certificate_verification_error_naming_the_trust_store(secured, clients):
    broker, certs = secured
    other = publisher(clients, broker, username="sensor", password=PASSWORD, tls=True, ca_file=certs["other_ca.crt"],
                      client_id="other")
    system = publisher(clients, broker, username="sensor", password=PASSWORD, tls=True, ca_file="system",
                       client_id="system")
    assert wait_until(lambda: other.last_error is not None and system.last_error is not None, timeout=5)
    where = f"{broker.host}:{broker.port}"
    assert other.last_error.startswith(f"TLS certificate verification failed: the broker {where} is not trusted by "
                                       f"mqtt.ca_file {certs['other_ca.crt']} (")
    assert system.last_error.startswith(f"TLS certificate verification failed: the broker {where} is not trusted by "
                                        "the system trust store (")
    assert "\n" not in other.last_error and not other.connected and not system.connected


def test_a_client_certificate_is_used_when_the_broker_requires_one(mosquitto, clients, tmp_path):
    certs = make_certificates(tmp_path)
    broker = mosquitto(f"cafile {certs['ca.crt']}\ncertfile {certs['server.crt']}\nkeyfile {certs['server.key']}\n"
                       "require_certificate true")
    sub = subscriber(clients, broker, ["emotion/testcam/emotions"], configure=lambda client: client.tls_set(
        ca_certs=str(certs["ca.crt"]), certfile=str(certs["client.crt"]), keyfile=str(certs["client.key"])))
    pub = publisher(clients, broker, tls=True, ca_file=certs["ca.crt"], cert_file=certs["client.crt"],
                    key_file=certs["client.key"], discovery=False)
    none = publisher(clients, broker, tls=True, ca_file=certs["ca.crt"], client_id="none")
    foreign = publisher(clients, broker, tls=True, ca_file=certs["ca.crt"], cert_file=certs["other_ca.crt"],
                        key_file=tmp_path / "other_ca.key", client_id="foreign")
    assert wait_until(lambda: pub.connected), pub.last_error
    pub.publish_emotions(windows(1)[0])
    assert sub.wait_for(lambda: sub.seqs("emotion/testcam/emotions") == [1])
    assert wait_until(lambda: none.last_error is not None and foreign.last_error is not None, timeout=5)
    refused = f"TLS client certificate refused by the broker {broker.host}:{broker.port} ("
    for client in (none, foreign):
        assert client.last_error.startswith(refused), client.last_error
        assert client.last_error.endswith("check mqtt.cert_file and mqtt.key_file") and not client.connected
    assert "certificate required" in none.last_error and "unknown ca" in foreign.last_error


def test_tls_without_a_ca_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^mqtt\.ca_file: required when mqtt\.tls is true"):
        load_config(overrides=["mqtt.tls=true"], env={})
    assert load_config(overrides=["mqtt.tls=true", "mqtt.ca_file=system"], env={}).mqtt.ca_file == "system"


def test_system_trust_store_is_accepted_and_a_missing_ca_file_is_named(tmp_path):
    settings = dict(device="cam", host="127.0.0.1", port=9, prefix="emotion", qos=1, client_id=None, username=None,
                    password=None, tls=True, cert_file=None, key_file=None, tls_insecure=False, keepalive=30,
                    buffer_size=4, reconnect_min_s=1, reconnect_max_s=2, discovery=False,
                    discovery_prefix="homeassistant")
    MqttPublisher(ca_file="system", **settings).close(timeout=0.5)
    with pytest.raises(MqttError, match="mqtt.ca_file: file not found: .*nope.pem"):
        MqttPublisher(ca_file=str(tmp_path / "nope.pem"), **settings)
