"""Home Assistant MQTT discovery: the retained configs from which Home Assistant builds the device and its entities.

One device with a dominant-emotion ``enum`` sensor, a percentage sensor per class, a faces sensor and, when it
exists, the privacy switch; all share one ``availability`` (the device's retained ``online``/``offline``) and carry
an ``origin`` block. Home Assistant announces itself with ``online`` on ``<discovery_prefix>/status`` (its birth
message) after it starts: the configs are then sent again, so the device appears even when the broker lost them.
With discovery turned off the same topics get empty retained payloads, which is how Home Assistant is told to
remove the entities.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from edge_app.emotions import EMOTIONS

NO_FACE = "none"  # the dominant-emotion state of a window without faces (an enum state must be one of its options)
BIRTH_PAYLOAD = b"online"


@dataclass(frozen=True)
class Device:
    """What discovery says about the device, and its own topics that the entities read from and write to."""

    id: str
    model: str
    sw_version: str
    discovery_prefix: str
    emotions_topic: str
    status_topic: str
    sensing_topic: str
    sensing_set_topic: str


def birth_topic(discovery_prefix: str) -> str:
    """Where Home Assistant publishes ``online`` when it (re)starts."""
    return f"{discovery_prefix}/status"


def discovery_messages(device: Device, classes: Sequence[str], switch: bool, enabled: bool
                       ) -> list[tuple[str, bytes]]:
    """(topic, retained payload) for every entity this device may have: its config, or empty to remove it.

    Every class of the full set is covered, so entities of classes the current model lacks (a class subset) and a
    switch turned off in the config are removed rather than left behind.
    """
    configs = discovery_configs(device, classes, switch) if enabled else {}
    every = discovery_configs(device, EMOTIONS, switch=True)
    extra = [topic for topic in configs if topic not in every]
    return [(topic, json.dumps(configs[topic]).encode() if topic in configs else b"") for topic in [*every, *extra]]


def discovery_configs(device: Device, classes: Sequence[str], switch: bool) -> dict[str, dict]:
    """Config topic -> discovery payload, as Home Assistant's MQTT discovery documents them."""
    availability = {"topic": device.status_topic, "payload_available": "online", "payload_not_available": "offline"}
    common = {
        "availability": [availability],
        "device": {
            "identifiers": [f"edge_emotion_{device.id}"],
            "name": f"Emotion sensor {device.id}",
            "model": device.model,
            "manufacturer": "edge-emotion",
            "sw_version": device.sw_version,
        },
        "origin": {"name": "edge-emotion", "sw_version": device.sw_version},
    }
    sensor = {**common, "state_topic": device.emotions_topic}
    dev = device.id
    base = f"{device.discovery_prefix}/sensor/{dev}"
    configs: dict[str, dict] = {
        f"{base}/dominant_emotion/config": {
            **sensor,
            "name": "Dominant emotion",
            "unique_id": f"{dev}_dominant_emotion",
            "object_id": f"{dev}_dominant_emotion",
            "icon": "mdi:emoticon-outline",
            "device_class": "enum",
            "options": [*classes, NO_FACE],
            "value_template": f"{{{{ value_json.dominant if value_json.dominant is not none else '{NO_FACE}' }}}}",
        },
        f"{base}/faces/config": {
            **sensor,
            "name": "Faces",
            "unique_id": f"{dev}_faces",
            "object_id": f"{dev}_faces",
            "icon": "mdi:account-group",
            "state_class": "measurement",
            "value_template": "{{ value_json.faces }}",
        },
    }
    for label in classes:
        configs[f"{base}/{label}/config"] = {
            **sensor,
            "name": label.capitalize(),
            "unique_id": f"{dev}_{label}",
            "object_id": f"{dev}_{label}",
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "value_template": f"{{{{ (value_json.emotions.{label} * 100) | round(1) }}}}",
        }
    if switch:
        configs[f"{device.discovery_prefix}/switch/{dev}/sensing/config"] = {
            **common,
            "name": "Sensing",
            "unique_id": f"{dev}_sensing",
            "object_id": f"{dev}_sensing",
            "icon": "mdi:cctv",
            "command_topic": device.sensing_set_topic,
            "state_topic": device.sensing_topic,
            "payload_on": "ON",
            "payload_off": "OFF",
            "state_on": "ON",
            "state_off": "OFF",
            "optimistic": False,
            "retain": False,
        }
    return configs
