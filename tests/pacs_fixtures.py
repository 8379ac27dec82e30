"""A real PACS for the tests: Orthanc with its DICOMweb plugin on 127.0.0.1, plus small REST helpers.

The session fixture :func:`orthanc` writes a configuration (free HTTP and DICOM ports, a temporary storage
folder, remote access off, no authentication, one ``DicomModalities`` entry for the test's DICOM node),
starts ``Orthanc CONFIG.json``, waits for ``/system`` and stops the server by its process id at the end.
Orthanc comes from the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (``.ci/run`` installs them;
docs/pacs.md says how without root); a missing Orthanc is a test failure, not a skip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ORTHANC_AET = "ORTHANC"
NODE_AET = "GDLA"  # the AE title of the DICOM node (python -m common listen) in Orthanc's DicomModalities
NODE_MODALITY = "gdla"
DICOMWEB_PLUGIN_PLACES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
)
START_TIMEOUT_S = 60


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def orthanc_binary() -> tuple[str, str]:
    """(Orthanc executable, DICOMweb plugin); fails the test with the install command when either is missing."""
    binary = shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.exists(p)), None
    )
    plugin = os.environ.get("GDLA_ORTHANC_DICOMWEB_PLUGIN") or next(
        (p for p in DICOMWEB_PLUGIN_PLACES if os.path.exists(p)), None
    )
    if not binary or not plugin or not os.path.exists(plugin):
        pytest.fail(
            "Orthanc and its DICOMweb plugin are needed for the PACS tests: apt-get install -y orthanc "
            "orthanc-dicomweb (.ci/run does it; see docs/pacs.md for machines without root)"
        )
    return binary, plugin


@dataclass
class Orthanc:
    """A running Orthanc: its REST root, DICOMweb root, DICOM port, and the node port it sends to."""

    http_port: int
    dicom_port: int
    node_port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        auth: tuple[str, str] | None = None,
    ) -> object:
        """One REST call (HTTP basic ``auth`` if given); the JSON answer (or ``None`` for an empty body)."""
        headers = {"Content-Type": content_type} if body is not None else {}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as answer:
            data = answer.read()
        return json.loads(data) if data else None

    def upload(self, files: list[Path], auth: tuple[str, str] | None = None) -> list[dict]:
        """``POST /instances`` for each file; Orthanc's answers (ID, ParentStudy, ...)."""
        return [self.request("POST", "/instances", Path(f).read_bytes(), "application/dicom", auth) for f in files]

    def series_of_study(self, study_uid: str) -> list[dict]:
        """Orthanc's series of the study with this StudyInstanceUID (``MainDicomTags``, ``Instances``)."""
        found = self.request(
            "POST",
            "/tools/find",
            json.dumps({"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}).encode(),
        )
        return list(found)

    def study_id(self, study_uid: str) -> str:
        found = self.request(
            "POST", "/tools/find", json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).encode()
        )
        assert len(found) == 1, f"study {study_uid}: {found}"
        return found[0]


def start_orthanc(folder: Path, node_port: int, settings: dict | None = None) -> Orthanc:
    """Write ``folder/orthanc.json`` (``settings`` added), start Orthanc on free ports, wait for ``/system``."""
    binary, plugin = orthanc_binary()
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "gdla-test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "StableAge": 1,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "DicomModalities": {NODE_MODALITY: [NODE_AET, "127.0.0.1", node_port]},
        **(settings or {}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
    log = folder / "orthanc.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [binary, str(folder / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Orthanc(http_port, dicom_port, node_port, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            server.request("GET", "/system")
            return server
        except urllib.error.HTTPError:  # answering, with authentication on
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.3)
    stop_orthanc(server)
    raise RuntimeError(f"Orthanc did not answer /system within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_orthanc(server: Orthanc) -> None:
    """SIGTERM to Orthanc's process id; SIGKILL if it has not stopped after 20 s."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> Orthanc:
    """One Orthanc for the test session (see the module docstring), registered in tests/conftest.py so that every
    module shares it (one per pytest-xdist worker); each test uploads studies with new UIDs and queries by them."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), node_port=free_port())
    yield server
    stop_orthanc(server)
