"""Home Assistant discovery on a real mosquitto, device side: what the configs hold, the birth message, removal.

tests/test_homeassistant_core.py checks the same configs against a real Home Assistant core.
"""

from __future__ import annotations

import json

import paho.mqtt.client as paho
from mqtt_helpers import publisher, subscriber, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edge_app.emotions import EMOTIONS
from edge_app.publish.sensing import SensingSwitch

SWITCH = "homeassistant/switch/testcam/sensing/config"
SENSORS = [f"homeassistant/sensor/testcam/{name}/config" for name in ("dominant_emotion", "faces", *EMOTIONS)]


def configs(sub) -> dict[str, bytes]:
    """The last payload the subscriber got on each discovery topic."""
    return {topic: payload for topic, payload, _ in sub.messages if topic.startswith("homeassistant/")}


def publish(broker, topic: str, payload: bytes) -> None:
    """One message from another client (Home Assistant's birth message, a marker)."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_configs_origin_enum_faces_switch_and_one_availability(mosquitto, clients, tmp_path) -> None:
    broker = mosquitto()
    sub = subscriber(clients, broker, ["homeassistant/#"])
    publisher(clients, broker, switch=SensingSwitch(state_file=tmp_path / "sensing"))
    assert wait_until(lambda: set(configs(sub)) == {*SENSORS, SWITCH})
    sent = {topic: json.loads(payload) for topic, payload in configs(sub).items()}

    assert len({json.dumps(c["availability"]) for c in sent.values()}) == 1, "one availability shared by all"
    assert sent[SWITCH]["availability"] == [{"topic": "emotion/testcam/status", "payload_available": "online",
                                             "payload_not_available": "offline"}]
    assert all(c["origin"]["name"] == "edge-emotion" and c["origin"]["sw_version"] for c in sent.values())
    assert len({json.dumps(c["device"]) for c in sent.values()}) == 1, "all entities on one device"
    assert len({c["unique_id"] for c in sent.values()}) == len(sent)

    dominant = sent[SENSORS[0]]
    assert dominant["device_class"] == "enum" and dominant["options"] == [*EMOTIONS, "none"]
    faces = sent["homeassistant/sensor/testcam/faces/config"]
    assert faces["state_topic"] == "emotion/testcam/emotions" and "value_json.faces" in faces["value_template"]
    switch = sent[SWITCH]
    assert switch["command_topic"] == "emotion/testcam/sensing/set"
    assert switch["state_topic"] == "emotion/testcam/sensing"
    assert (switch["payload_on"], switch["payload_off"]) == ("ON", "OFF")


def test_birth_message_sends_the_configs_again(mosquitto, clients) -> None:
    broker = mosquitto()
    sub = subscriber(clients, broker, ["homeassistant/sensor/testcam/happy/config"])
    publisher(clients, broker)
    assert wait_until(lambda: len(sub.messages) == 1)
    publish(broker, "homeassistant/status", b"online")  # Home Assistant (re)started: it may have lost every entity
    assert wait_until(lambda: len(sub.messages) == 2), "the birth message must bring the configs again"
    assert sub.messages[1][1] == sub.messages[0][1]


def test_turning_discovery_or_the_switch_off_removes_their_entities(mosquitto, clients, tmp_path) -> None:
    broker = mosquitto()
    first = publisher(clients, broker, switch=SensingSwitch(state_file=tmp_path / "sensing"))
    assert wait_until(lambda: first.connected)
    first.close(timeout=2)
    retained = subscriber(clients, broker, ["homeassistant/#", "emotion/testcam/sensing"])
    assert wait_until(lambda: len(retained.messages) == len(SENSORS) + 2)  # configs and the switch's state

    # The same device with a four-class model and no switch: the other classes' and the switch's entities go.
    subset = ("happy", "sad", "surprise", "neutral")
    second = publisher(clients, broker, classes=subset)
    assert wait_until(lambda: second.connected)
    second.close(timeout=2)
    late = subscriber(clients, broker, ["homeassistant/#", "emotion/testcam/sensing"])
    kept = {f"homeassistant/sensor/testcam/{name}/config" for name in ("dominant_emotion", "faces", *subset)}
    assert wait_until(lambda: set(configs(late)) == kept)
    assert json.loads(configs(late)[SENSORS[0]])["options"] == [*subset, "none"]

    # Discovery off: every entity is removed with an empty retained config, as Home Assistant expects.
    third = publisher(clients, broker, discovery=False)
    assert wait_until(lambda: third.connected)
    third.close(timeout=2)
    assert wait_until(lambda: {t for t, p in configs(late).items() if p == b""} == {*SENSORS, SWITCH})
    empty = subscriber(clients, broker, ["homeassistant/#", "emotion/testcam/sensing"])
    publish(broker, "homeassistant/marker", b"x")  # arrives after whatever the broker had retained
    assert wait_until(lambda: empty.messages)
    assert empty.messages == [("homeassistant/marker", b"x", False)], "no retained config may be left"
