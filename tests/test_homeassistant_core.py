"""A real Home Assistant core builds the device from discovery, and its switch turns sensing off and on again.

Home Assistant 2024.3 (the last release on Python 3.11) runs from its own venv, cached outside the clone
(``$EDGE_EMOTION_HA_VENV``, default /var/cache/edge-emotion-ci/ha-venv, made by .ci/run), headless with a throw-away
configuration directory and nothing that reaches the network. Its owner is made through the onboarding API, its MQTT
integration set up through the config-flow REST API against the test's mosquitto, and every check goes through its
REST API while `edge-emotion run` reads a real video.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import free_port
from mqtt_helpers import subscriber, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from sensing_helpers import Service, face_video, stats

from edge_app.emotions import EMOTIONS

HA_VENV = Path(os.environ.get("EDGE_EMOTION_HA_VENV", "/var/cache/edge-emotion-ci/ha-venv"))
HA_PYTHON = HA_VENV / "bin" / "python"
# Generous: Home Assistant's first start on a busy 2-core machine takes well under a minute, but CI may be slower.
START_TIMEOUT_S = 240
WAIT_S = 120
CONFIGURATION = """\
homeassistant:
  name: edge-emotion test
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: DE
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
frontend:
logger:
  default: warning
"""
# Every step but the owner's is marked done, so the onboarding API creates the owner and nothing else is set up
# (its core-config step would add integrations that reach the network).
ONBOARDING = {"version": 4, "minor_version": 1, "key": "onboarding",
              "data": {"done": ["integration", "core_config", "analytics"]}}
# Set to a .png path to also save the device page as Home Assistant's frontend shows it (docs/homeassistant.png).
SCREENSHOT = os.environ.get("EDGE_EMOTION_HA_SCREENSHOT")
# Text anywhere in the page, shadow DOMs included (the frontend is made of web components).
PAGE_TEXT = """
const walk = (node) => [node.textContent || "", ...[...(node.shadowRoot ? node.shadowRoot.children : [])
  ].map(walk), ...[...node.children].map(walk)].join(" ");
return walk(document.documentElement);
"""
ENTITIES = {"sensor.testcam_dominant_emotion", "sensor.testcam_faces", "switch.testcam_sensing",
            *(f"sensor.testcam_{name}" for name in EMOTIONS)}


CONFIG_TOPICS = {"homeassistant/switch/testcam/sensing/config",
                 *(f"homeassistant/sensor/testcam/{name}/config" for name in ("dominant_emotion", "faces", *EMOTIONS))}


def clear_retained(broker, topic: str) -> None:
    """Delete a retained message from the broker, as a broker that lost its store would be."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


class HomeAssistant:
    """One Home Assistant core process on a free port with its own configuration directory."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = f"{self.url}/"
        self.config = workdir / "config"
        (self.config / ".storage").mkdir(parents=True)
        (self.config / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port))
        (self.config / ".storage" / "onboarding").write_text(json.dumps(ONBOARDING))
        self.log_path = workdir / "home-assistant.log"
        self.token = ""
        self._log = self.log_path.open("w")
        self.start()

    def start(self) -> None:
        """Start the core (again: same configuration, users and MQTT entry) and wait until its HTTP API answers."""
        self.process = subprocess.Popen(
            [str(HA_PYTHON), "-m", "homeassistant", "-c", str(self.config), "--skip-pip", "--log-no-color"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while not self._answers():
                assert self.process.poll() is None, f"Home Assistant exited: {self.log_tail()}"
                assert time.monotonic() < deadline, f"Home Assistant did not answer in {START_TIMEOUT_S} s"
                time.sleep(0.5)
        except BaseException:
            self.stop()  # the fixture never yields, so nothing else would stop it
            raise

    def log_tail(self) -> str:
        return self.log_path.read_text()[-3000:]

    def _answers(self) -> bool:
        """Whether the HTTP server is up: any HTTP status counts (the API answers 401 to a request without login)."""
        try:
            self.request("GET", "/api/")
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def request(self, method: str, path: str, body: dict | None = None, form: dict | None = None):
        data, headers = None, {}
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif form is not None:
            data = "&".join(f"{k}={v}" for k, v in form.items()).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        return json.loads(text) if text.strip().startswith(("{", "[")) else text

    def login_code(self) -> str:
        """An authorisation code from the login flow, as the frontend's own login page gets one."""
        flow = self.request("POST", "/auth/login_flow", {
            "client_id": self.client_id, "handler": ["homeassistant", None], "redirect_uri": self.client_id})
        done = self.request("POST", f"/auth/login_flow/{flow['flow_id']}", {
            "client_id": self.client_id, "username": "test", "password": "test-only-password"})
        return done["result"]

    def onboard_owner(self) -> None:
        """Create the owner through onboarding and log in with the authorisation code it returns."""
        created = self.request("POST", "/api/onboarding/users", {
            "client_id": self.client_id, "name": "Test", "username": "test", "password": "test-only-password",
            "language": "en"})
        tokens = self.request("POST", "/auth/token", form={
            "grant_type": "authorization_code", "code": created["auth_code"], "client_id": self.client_id})
        self.token = tokens["access_token"]

    def add_mqtt(self, host: str, port: int) -> None:
        """The MQTT integration through the config flow, as the UI's "Add integration" does."""
        flow = self.request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        assert flow.get("step_id") == "broker", flow
        result = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                              {"broker": host, "port": port})
        assert result.get("type") == "create_entry" and result["result"]["state"] == "loaded", result

    def states(self) -> dict[str, dict]:
        return {s["entity_id"]: s for s in self.request("GET", "/api/states") if "testcam" in s["entity_id"]}

    def all_set_up(self) -> bool:
        """Every entity exists and is set up (not a placeholder restored from the registry after a restart)."""
        states = self.states()
        return all(e in states and not states[e]["attributes"].get("restored") for e in ENTITIES)

    def template(self, text: str):
        """What Home Assistant renders ``text`` to (text, or parsed JSON when it renders JSON)."""
        return self.request("POST", "/api/template", {"template": text})

    def screenshot(self, path: str, page: str, shows: list[str]) -> None:
        """Open ``page`` logged in (the frontend's own auth callback) in headless Chromium; save it once it shows
        every text in ``shows``."""
        webdriver = pytest.importorskip("selenium.webdriver")
        from selenium.webdriver.support.ui import WebDriverWait

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1100,900", "--hide-scrollbars"):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
        try:
            state = base64.b64encode(json.dumps({"hassUrl": self.url, "clientId": self.client_id}).encode()).decode()
            driver.get(f"{self.url}{page}?auth_callback=1&code={self.login_code()}&state={state}")
            WebDriverWait(driver, WAIT_S).until(lambda d: all(text in d.execute_script(PAGE_TEXT) for text in shows))
            driver.save_screenshot(path)
        finally:
            driver.quit()

    def stop(self, close_log: bool = True) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if close_log:
            self._log.close()


@pytest.fixture
def home_assistant(tmp_path):
    if not HA_PYTHON.exists() or not list(HA_VENV.glob("lib/python3*/site-packages/homeassistant")):
        pytest.skip(f"Home Assistant core is not installed in {HA_VENV} (.ci/run creates it)")
    ha = HomeAssistant(tmp_path / "ha")
    yield ha
    ha.stop()


def test_home_assistant_builds_the_device_and_its_switch_stops_the_camera(home_assistant, mosquitto, clients,
                                                                          tmp_path) -> None:
    ha = home_assistant
    broker = mosquitto()
    ha.onboard_owner()
    ha.add_mqtt(broker.host, broker.port)
    sub = subscriber(clients, broker, ["emotion/testcam/stats", "homeassistant/sensor/testcam/dominant_emotion/config"])
    service = Service(broker.port, face_video(tmp_path / "faces.avi"), tmp_path / "edge-emotion.log",
                      "--set", f"sensing.state_file={tmp_path / 'state' / 'sensing'}")
    try:
        # The device and every entity, built by Home Assistant from the discovery configs alone.
        assert wait_until(lambda: ENTITIES <= set(ha.states()), WAIT_S), (set(ha.states()), ha.log_tail())
        device = "device_id('sensor.testcam_dominant_emotion')"
        assert ha.template(f"{{{{ device_attr({device}, 'name') }}}}") == "Emotion sensor testcam"
        assert set(ha.template(f"{{{{ device_entities({device}) | tojson }}}}")) == ENTITIES
        options = json.loads(sub.on("homeassistant/sensor/testcam/dominant_emotion/config")[0])["options"]
        assert wait_until(lambda: ha.states()["sensor.testcam_dominant_emotion"]["state"] in EMOTIONS, WAIT_S)
        dominant = ha.states()["sensor.testcam_dominant_emotion"]
        assert dominant["state"] in options and dominant["attributes"]["device_class"] == "enum"
        assert ha.states()["switch.testcam_sensing"]["state"] == "on"
        assert service.holds_video_open()
        if SCREENSHOT:
            page = f"/config/devices/device/{ha.template(f'{{{{ {device} }}}}')}"
            ha.screenshot(SCREENSHOT, page, ["Dominant emotion", "Sensing", "Happy", "%"])

        # Off in Home Assistant: the device closes the video (its camera), reads no frame, and says so.
        ha.request("POST", "/api/services/switch/turn_off", {"entity_id": "switch.testcam_sensing"})
        assert wait_until(lambda: ha.states()["switch.testcam_sensing"]["state"] == "off", WAIT_S)
        assert wait_until(lambda: stats(sub) and not stats(sub)[-1]["sensing"], WAIT_S)
        assert wait_until(lambda: not service.holds_video_open(), WAIT_S)
        frozen, seen = stats(sub)[-1]["frames"], len(stats(sub))
        assert wait_until(lambda: len(stats(sub)) >= seen + 2, WAIT_S)
        assert [s["frames"] for s in stats(sub)[seen:]] == [frozen] * (len(stats(sub)) - seen)
        assert stats(sub)[-1]["source_state"] == "off" and "sensing off:" in service.log

        # On again: the video opens and frames flow.
        ha.request("POST", "/api/services/switch/turn_on", {"entity_id": "switch.testcam_sensing"})
        assert wait_until(lambda: stats(sub)[-1]["sensing"] and stats(sub)[-1]["frames"] > frozen, WAIT_S)
        assert ha.states()["switch.testcam_sensing"]["state"] == "on" and "sensing on:" in service.log

        # Home Assistant restarts and the broker has lost the retained configs: its birth message brings them back.
        ha.stop(close_log=False)
        for topic in {t for t, _, _ in sub.messages if t.endswith("/config")} | CONFIG_TOPICS:
            clear_retained(broker, topic)
        ha.start()
        assert wait_until(lambda: ha.all_set_up(), WAIT_S), "the birth message must bring the entities back"
        assert wait_until(lambda: ha.states()["sensor.testcam_dominant_emotion"]["state"] in EMOTIONS, WAIT_S)
    finally:
        assert service.stop() == 0, service.log[-3000:]
    # The service's retained "offline" makes every entity unavailable.
    assert wait_until(lambda: all(ha.states()[e]["state"] == "unavailable" for e in ENTITIES), WAIT_S)
    errors = [line for line in ha.log_path.read_text().splitlines() if " ERROR " in line]
    assert not errors, "Home Assistant logged errors (a discovery config it could not read?):\n" + "\n".join(errors)
