"""TLS for the MQTT client: loading the configured files, and one line saying whose certificate a failure is about."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import paho.mqtt.client as paho

from edge_app.config import SYSTEM_CA

# An OpenSSL error as paho logs it: "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)"
SSL_ERROR = re.compile(r"\[SSL: (?P<code>\w+)\] (?P<text>.*?)(?: \(_ssl\.c:\d+\))?$")
# Alerts a broker sends when it does not accept the client's certificate (or its lack of one)
CLIENT_CERT_ALERT = re.compile(r"ALERT_(\w*CERTIFICATE\w*|UNKNOWN_CA)$")


class MqttError(ValueError):
    """A publisher setting that cannot work (unreadable TLS file, device id unusable in a topic)."""


def tls_problem(code: str, text: str, where: str, ca: str) -> str:
    """One line that says which side's certificate failed: the broker's (our CA) or ours (the broker's CA)."""
    if code == "CERTIFICATE_VERIFY_FAILED":
        return f"TLS certificate verification failed: the broker {where} is not trusted by {ca} ({text})"
    if CLIENT_CERT_ALERT.search(code):
        return f"TLS client certificate refused by the broker {where} ({text}): check mqtt.cert_file and mqtt.key_file"
    return f"TLS handshake with {where} failed: {text}"


def configure_tls(client: paho.Client, ca_file, cert_file, key_file, tls_insecure: bool) -> None:
    """Load the TLS files into ``client``; a missing or unreadable one is an ``MqttError`` naming it."""
    if ca_file == SYSTEM_CA:
        ca_file = None  # paho then verifies against the operating system's trust store
    for key, path in (("mqtt.ca_file", ca_file), ("mqtt.cert_file", cert_file), ("mqtt.key_file", key_file)):
        if path is not None and not Path(path).is_file():
            raise MqttError(f"{key}: file not found: {path}")
    try:
        client.tls_set(ca_certs=ca_file and str(ca_file), certfile=cert_file and str(cert_file),
                       keyfile=key_file and str(key_file))
    except (ssl.SSLError, OSError) as err:
        raise MqttError(f"mqtt TLS files could not be loaded: {err}") from err
    client.tls_insecure_set(tls_insecure)
