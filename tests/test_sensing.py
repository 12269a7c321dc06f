"""The privacy switch on the device, without Home Assistant: commands over a real mosquitto close and reopen a real
video (seen in the process's open files), and the state is kept across a restart of `edge-emotion run`."""

from __future__ import annotations

import json
import logging

import paho.mqtt.client as paho
from mqtt_helpers import publisher, subscriber, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from sensing_helpers import Service, face_video, stats

from edge_app.config import load_config
from edge_app.publish.sensing import SensingSwitch, default_state_file

SET = "emotion/testcam/sensing/set"
STATE = "emotion/testcam/sensing"
WAIT_S = 60


def command(broker, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish one message as another MQTT client (Home Assistant, a user's script) would, and wait for the ack."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def windows(sub) -> list[dict]:
    return [json.loads(p) for p in sub.on("emotion/testcam/emotions")]


def test_off_closes_the_video_on_reopens_it_and_off_survives_a_restart(mosquitto, clients, tmp_path) -> None:
    broker = mosquitto()
    state_directory = tmp_path / "state"  # as systemd's StateDirectory= gives it
    state_directory.mkdir()
    video = face_video(tmp_path / "faces.avi")
    sub = subscriber(clients, broker, ["emotion/testcam/#"])
    service = Service(broker.port, video, tmp_path / "first.log", state_directory=state_directory)
    try:
        assert wait_until(lambda: stats(sub) and stats(sub)[-1]["frames"] > 0, WAIT_S), service.log
        assert sub.on(STATE)[-1] == b"ON" and service.holds_video_open()

        command(broker, SET, b"OFF")
        assert wait_until(lambda: sub.on(STATE)[-1] == b"OFF", WAIT_S)
        assert wait_until(lambda: not service.holds_video_open(), WAIT_S), "the video must be closed, not ignored"
        assert wait_until(lambda: stats(sub) and stats(sub)[-1]["sensing"] is False, WAIT_S)
        frozen = stats(sub)[-1]["frames"]  # the frame counter once the window in which OFF came has closed
        assert wait_until(lambda: any(w["sensing"] is False for w in windows(sub)), WAIT_S)
        switched = next(i for i, w in enumerate(windows(sub)) if w["sensing"] is False)  # may hold frames
        assert wait_until(lambda: len(windows(sub)) >= switched + 3, WAIT_S)
        off = windows(sub)[switched + 1:]
        assert all(w["sensing"] is False and w["frames"] == 0 and w["dominant"] is None for w in off), off
        assert stats(sub)[-1]["frames"] == frozen and stats(sub)[-1]["source_state"] == "off"
        assert (state_directory / "sensing").read_text() == "OFF\n"
    finally:
        assert service.stop() == 0, service.log

    restarted = Service(broker.port, video, tmp_path / "second.log", state_directory=state_directory)
    try:
        seen = len(windows(sub))
        opened = []
        assert wait_until(lambda: opened.append(restarted.holds_video_open()) or len(windows(sub)) >= seen + 3, WAIT_S)
        assert not any(opened), "after a restart with sensing off the video must never be opened"
        assert all(w["sensing"] is False and w["frames"] == 0 for w in windows(sub)[seen:])
        assert "sensing off (kept in" in restarted.log and sub.on(STATE)[-1] == b"OFF"

        command(broker, SET, b"ON")
        assert wait_until(lambda: windows(sub)[-1]["sensing"] and windows(sub)[-1]["frames"] > 0, WAIT_S)
        assert restarted.holds_video_open() and (state_directory / "sensing").read_text() == "ON\n"
    finally:
        assert restarted.stop() == 0, restarted.log


def test_only_exact_commands_on_the_command_topic_are_obeyed_and_the_first_bad_one_is_logged(
        mosquitto, clients, tmp_path, caplog) -> None:
    broker = mosquitto()
    switch = SensingSwitch(default=True, state_file=tmp_path / "sensing")
    sub = subscriber(clients, broker, [STATE])
    pub = publisher(clients, broker, switch=switch, discovery=False)
    assert wait_until(lambda: pub.connected and sub.on(STATE) == [b"ON"])
    with caplog.at_level(logging.WARNING, logger="edge_app.publish.sensing"):
        for payload in (b"off", b"0", b"OFF ", b"", b'{"state": "OFF"}', b"\xff" * 1000):
            command(broker, SET, payload)
        command(broker, STATE, b"OFF")  # the state topic is not a command topic
        command(broker, "emotion/othercam/sensing/set", b"OFF")
        command(broker, SET + "/x", b"OFF")
        command(broker, SET, b"ON")  # a valid command after them: all before it were seen, and none obeyed
        assert wait_until(lambda: sub.on(STATE).count(b"ON") >= 2)
        assert switch.on and sub.on(STATE).count(b"OFF") == 1  # the test's own message on the state topic
        warnings = [r.getMessage() for r in caplog.records if "sensing command ignored" in r.getMessage()]
        assert len(warnings) == 1 and "b'off' is not ON or OFF" in warnings[0]
    command(broker, SET, b"OFF")
    assert wait_until(lambda: sub.on(STATE)[-1] == b"OFF") and not switch.on
    assert (tmp_path / "sensing").read_text() == "OFF\n"

    # A retained command is obeyed when it comes (a live message), but not when the broker replays it to a new
    # connection: an old order must not switch the camera at every reconnect.
    command(broker, SET, b"ON", retain=True)
    assert wait_until(lambda: switch.on)
    later = SensingSwitch(default=False, state_file=tmp_path / "later")
    with caplog.at_level(logging.WARNING, logger="edge_app.publish.sensing"):
        publisher(clients, broker, switch=later, discovery=False, client_id="later")
        assert wait_until(lambda: "sensing command ignored: a retained command" in caplog.text)
    assert not later.on
    command(broker, SET, b"", retain=True)  # clear the retained message from the broker


def test_state_file_place_default_and_damaged_files(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_file(None) == tmp_path / "systemd" / "sensing"
    assert default_state_file(str(tmp_path / "mine")) == tmp_path / "systemd" / "sensing"  # the unit's only place
    monkeypatch.delenv("STATE_DIRECTORY")
    assert default_state_file(str(tmp_path / "mine")) == tmp_path / "mine"
    assert default_state_file(None) == tmp_path / "xdg" / "edge-emotion" / "sensing"

    path = tmp_path / "sensing"
    assert not SensingSwitch(default=False, state_file=path).on and not path.exists()  # nothing written at start
    path.write_text("OFF\n")
    assert not SensingSwitch(default=True, state_file=path).on
    path.write_text("maybe")
    with caplog.at_level(logging.WARNING):
        assert SensingSwitch(default=True, state_file=path).on
    assert "holds 'maybe', not ON or OFF: starting on" in caplog.text

    path.write_text("OFF\n")
    overrides = [f"sensing.state_file={path}"]
    assert not SensingSwitch.from_config(load_config(None, overrides, env={}).sensing).on
    # Without the switch its stored state is ignored: nothing could switch it back on.
    assert SensingSwitch.from_config(load_config(None, [*overrides, "sensing.switch=false"], env={}).sensing).on

    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    switch = SensingSwitch(default=True, state_file=blocked / "sensing")
    with caplog.at_level(logging.WARNING):
        switch.set(False)
    assert not switch.on and "it is lost at restart" in caplog.text
