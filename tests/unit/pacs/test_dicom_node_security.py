"""The DICOM node on a hospital network (issue 32): registered senders, DICOM TLS, the audit trail, the disk reserve.

Real peers on loopback: pynetdicom clients (127.0.0.2 plays another host), and Orthanc with DICOM TLS on
(tests/pacs_fixtures.py) as a sender and as the destination of the SEGs. Certificates are made here with the openssl
command line: a test CA, the node's and Orthanc's certificates (for 127.0.0.1), a client's, and a self-signed one.
The disk-reserve tests put the node's output on a small tmpfs (root only; skipped with the reason otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from node_harness import TEST_RESERVE_GB, Results, csv_rows, wait_for_text
from pacs_fixtures import NODE_AET, NODE_MODALITY, ORTHANC_AET, Orthanc, free_port, start_orthanc, stop_orthanc
from pacs_studies import BUNDLE, SIZE, foreground_bundle, seg_series, study_series
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification
from segment_fixtures import IntensityThreshold, copy_bundle

from common.__main__ import main
from common.pacs.audit import AUDIT_FILE
from common.pacs.disk_reserve import GB
from common.pacs.node import Destination, DicomNode, NodeSettings, serve
from common.pacs.senders import LOOPBACK_SENDERS, is_allowed, parse_sender, read_allow_file
from common.pacs.tls import TlsFiles
from common.segment.segmenter import SegmentOptions

CLIENT_AET = "TESTSCU"
OTHER_HOST = "127.0.0.2"  # a loopback address of its own: another host, as far as the node can tell


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """A test CA and certificates (PEM files) made with the openssl command line."""

    folder: Path
    ca: Path

    def cert(self, name: str) -> Path:
        return self.folder / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def node_files(self) -> TlsFiles:
        return TlsFiles(self.cert("node"), self.key("node"), self.ca)

    def client(self, name: str) -> ssl.SSLContext:
        """A client's TLS context: it trusts the test CA, checks the host name, presents ``name``'s certificate."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        context.load_cert_chain(self.cert(name), self.key(name))
        return context


def openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True)


def make_pki(folder: Path) -> Pki:
    """CA; ``node`` and ``orthanc`` (servers and clients on 127.0.0.1) and ``client``, all CA-signed; ``stranger``
    self-signed (same subject as ``client``); ``other.key``, a key of no certificate; ``locked.key``, the node's key
    encrypted."""
    folder.mkdir(parents=True, exist_ok=True)
    new_key = ("-newkey", "rsa:2048", "-nodes", "-days", "2")
    openssl("req", "-x509", *new_key, "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem"),
            "-subj", "/O=GDLA tests/CN=GDLA test CA")  # fmt: skip
    signed = ("-CA", str(folder / "ca.pem"), "-CAkey", str(folder / "ca.key"))
    for name, extra in (
        ("node", [*signed, "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]),
        ("orthanc", [*signed, "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]),
        ("client", signed),
        ("stranger", []),
    ):
        openssl("req", "-x509", *new_key, "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.pem"),
                "-subj", f"/O=GDLA tests/CN={'client' if name == 'stranger' else name}",
                "-addext", "basicConstraints=critical,CA:FALSE", *extra)  # fmt: skip
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(folder / "other.key"))
    openssl(
        "pkey",
        "-in",
        str(folder / "node.key"),
        "-aes128",
        "-passout",
        "pass:secret",
        "-out",
        str(folder / "locked.key"),
    )
    return Pki(folder, folder / "ca.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_orthanc(tmp_path_factory, pki) -> Orthanc:
    """Orthanc with DICOM TLS only (mutual: the test CA), and the node as a TLS modality it can send to."""
    node_port = free_port()
    server = start_orthanc(
        tmp_path_factory.mktemp("orthanc-tls"),
        node_port,
        {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki.cert("orthanc")),
            "DicomTlsPrivateKey": str(pki.key("orthanc")),
            "DicomTlsTrustedCertificates": str(pki.ca),
            "DicomTlsRemoteCertificateRequired": True,
            "DicomModalities": {
                NODE_MODALITY: {"AET": NODE_AET, "Host": "127.0.0.1", "Port": node_port, "UseDicomTls": True}
            },
        },
    )
    yield server
    stop_orthanc(server)


# ----------------------------------------------------------------------------- peers and the audit trail


def associate(
    port: int,
    calling: str = CLIENT_AET,
    called: str = NODE_AET,
    tls: ssl.SSLContext | None = None,
    source: str = "127.0.0.1",
) -> Association:
    """A pynetdicom association (CT storage, verification) from ``calling``@``source`` to the node."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 20
    return ae.associate(
        "127.0.0.1",
        port,
        ae_title=called,
        bind_address=(source, 0),
        tls_args=(tls, "127.0.0.1") if tls is not None else None,
    )


def rejection(assoc: Association) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ."""
    assert assoc.is_rejected, "the association was not rejected"
    answer = assoc.acceptor.primitive
    return answer.result, answer.result_source, answer.diagnostic


def store(assoc: Association, files: list[Path]) -> list[int]:
    """C-STORE ``files`` in an established association, C-ECHO, release; the C-STORE statuses."""
    assert assoc.is_established
    statuses = [assoc.send_c_store(pydicom.dcmread(f)).Status for f in files]
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    return statuses


def audit(output: Path, count: int, timeout: float = 30) -> list[dict]:
    """The audit trail's lines once there are at least ``count`` (written when a connection closes)."""
    deadline = time.monotonic() + timeout
    while True:
        path = output / AUDIT_FILE
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) >= count, f"{len(lines)} audit line(s), expected {count}: {lines}"
            return lines
        time.sleep(0.05)


def row_of(results: Results, study_uid: str, timeout: float = 120) -> dict:
    """The node's series.csv row of the (one-series) study ``study_uid``, once it is there."""
    with results.changed:
        found = lambda: [row for row in results.rows if row.get("study_uid") == study_uid]  # noqa: E731
        assert results.changed.wait_for(found, timeout), f"no row for study {study_uid}: {results.rows}"
        (row,) = found()
        return row


def stored_files(output: Path) -> list[Path]:
    """Every file under ``incoming/`` and ``queue/`` (hidden temporary files included)."""
    return [p for name in ("incoming", "queue") for p in (output / name).rglob("*") if p.is_file()]


# ----------------------------------------------------------------------------- bad input


def bad_input_cases(pki: Pki, tmp: Path) -> list[tuple[list[str], str]]:
    """(arguments, text the one error line must hold) for each kind of unusable input."""
    allow_file = tmp / "senders.txt"
    allow_file.write_text("# PACS and CT\nPACS@10.1.2.3\n\nCT1 10.1.2.4\n")
    tls = ["--tls-cert", str(pki.cert("node")), "--tls-key", str(pki.key("node")), "--tls-ca", str(pki.ca)]
    return [
        (["--allow", "PACS"], "'PACS': expected AET@HOST"),
        (["--allow", "PACS@pacs.example"], "'PACS@pacs.example': expected AET@HOST"),
        (["--allow", "PACS@10.1.2.3/24"], "has host bits set"),
        (["--allow", "@10.1.2.3"], "'@10.1.2.3': expected AET@HOST"),
        (["--allow", "A_TITLE_TOO_LONG_X@10.1.2.3"], "expected AET@HOST: an AE title of 1-16 characters"),
        (["--allow-file", str(allow_file)], f"{allow_file}:4: 'CT1 10.1.2.4': expected AET@HOST"),
        (["--allow-file", str(tmp / "absent.txt")], f"--allow-file {tmp / 'absent.txt'}: cannot read it"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0: listening beyond this machine needs registered senders: --allow"),
        (["--reserve-gb", "-1"], "--reserve-gb -1.0: expected a number of GB >= 0"),
        ([*tls[:2]], "missing --tls-key, --tls-ca"),
        (["--store-tls"], "--store-tls: needs the node's certificate"),
        ([*tls[:1], str(tmp / "absent.pem"), *tls[2:]], f"--tls-cert {tmp / 'absent.pem'}: cannot read it"),
        ([*tls[:3], str(pki.cert("node")), *tls[4:]], f"--tls-key {pki.cert('node')}: no PEM PRIVATE KEY block"),
        ([*tls[:3], str(pki.key("other")), *tls[4:]], f"--tls-key {pki.key('other')}: does not match the certificate"),
        ([*tls[:3], str(pki.key("locked")), *tls[4:]], f"--tls-key {pki.key('locked')}: the key is encrypted"),
        ([*tls[:5], str(tmp)], f"--tls-ca {tmp}: cannot read it"),
        ([*tls[:5], str(pki.key("node"))], f"--tls-ca {pki.key('node')}: no PEM CERTIFICATE block"),
    ]


def test_unusable_input_is_one_line_naming_it_exit_2_and_nothing_started(tmp_path, pki, capsys):
    for arguments, expected in bad_input_cases(pki, tmp_path):
        output = tmp_path / "node"
        command = ["listen", "--bundle", str(tmp_path / "no-bundle"), "--port", str(free_port())]
        assert main([*command, "--output", str(output), *arguments]) == 2, arguments
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("error: ") and expected in error, (arguments, error)
        assert not output.exists()  # no log, no folders: nothing started


# ----------------------------------------------------------------------------- registered senders and TLS


def test_sender_entries_match_the_ae_title_and_the_address_and_stars_only_where_written(tmp_path):
    allow_file = tmp_path / "senders.txt"
    allow_file.write_text(
        "# the PACS, the CT subnet\nPACS@10.1.2.3   # main PACS\n\nCT1@10.1.2.0/24\n*@fd00::/64\nQR@*\n"
    )
    pacs, ct, anyone_v6, qr = read_allow_file(allow_file)
    assert [str(x) for x in (pacs, ct, anyone_v6, qr)] == ["PACS@10.1.2.3/32", "CT1@10.1.2.0/24", "*@fd00::/64", "QR@*"]
    senders = (pacs, ct, anyone_v6, qr)
    accepted = [
        ("PACS", "10.1.2.3"),
        ("PACS ", "::ffff:10.1.2.3"),
        ("CT1", "10.1.2.200"),
        ("X", "fd00::5"),
        ("QR", "8.8.8.8"),
    ]
    refused = [("PACS", "10.1.2.4"), ("pacs", "10.1.2.3"), ("CT2", "10.1.2.200"), ("CT1", "10.1.3.1"), ("X", "fd01::5")]
    assert all(is_allowed(senders, ae, address) for ae, address in accepted)
    assert not any(is_allowed(senders, ae, address) for ae, address in refused)
    assert is_allowed(LOOPBACK_SENDERS, "ANY", "127.0.0.2") and is_allowed(LOOPBACK_SENDERS, "ANY", "::1")
    assert not is_allowed(LOOPBACK_SENDERS, "ANY", "10.1.2.3")


@pytest.fixture(scope="module")
def secure_node(tmp_path_factory, pki, tls_orthanc):
    """A node with DICOM TLS and two registered senders, storing its SEGs to Orthanc over TLS."""
    tmp = tmp_path_factory.mktemp("secure-node")
    settings = NodeSettings(
        output=tmp / "node",
        port=tls_orthanc.node_port,
        ae_title=NODE_AET,
        destination=Destination(ORTHANC_AET, "127.0.0.1", tls_orthanc.dicom_port),
        allow=(parse_sender(f"{CLIENT_AET}@127.0.0.1"), parse_sender(f"{ORTHANC_AET}@127.0.0.0/30")),
        tls=pki.node_files(),
        store_tls=True,
        reserve_gb=TEST_RESERVE_GB,
        quiet_seconds=1.0,
    )
    node = serve(
        copy_bundle(tmp, BUNDLE, spatial_size=SIZE),
        settings,
        SegmentOptions(device="cpu", network=IntensityThreshold()),
    )
    results = Results()
    node.on_result = results.add
    yield node, results
    node.stop()


def test_unregistered_senders_and_a_wrong_called_ae_are_rejected_and_audited(tmp_path, pki, secure_node):
    node, _ = secure_node
    output, port = node.settings.output, node.settings.port
    _, files = study_series(tmp_path / "series", generate_uid())
    before = len(audit(output, 0))
    client = pki.client("client")
    attempts = [
        (associate(port, calling="STRANGER", tls=client), (1, 1, 3), "calling AE title 'STRANGER' from 127.0.0.1"),
        (associate(port, tls=client, source=OTHER_HOST), (1, 1, 3), f"'{CLIENT_AET}' from {OTHER_HOST} is not a"),
        (associate(port, called="OTHERNODE", tls=client), (1, 1, 7), "called AE title 'OTHERNODE' is not this"),
    ]
    for assoc, expected, _ in attempts:
        assert rejection(assoc) == expected
    lines = audit(output, before + 3)[before:]
    for _, _, reason in attempts:
        (line,) = [x for x in lines if reason in x["reason"]]
        assert line["outcome"] == "rejected" and line["instances"] == 0
        assert line["tls_subject"] == "O=GDLA tests,CN=client"
    assert {line["peer_address"] for line in lines} == {"127.0.0.1", OTHER_HOST}
    assert not stored_files(output)
    # the same client, registered and calling the node's AE title, is accepted
    assert store(associate(port, tls=client), files) == [0] * 4


def test_orthanc_sends_over_tls_and_its_seg_comes_back_over_tls(tmp_path, secure_node, tls_orthanc):
    node, results = secure_node
    study_uid = generate_uid()
    _, files = study_series(tmp_path / "series", study_uid)
    tls_orthanc.upload(files)
    tls_orthanc.request(
        "POST", f"/modalities/{NODE_MODALITY}/store", tls_orthanc.study_id(study_uid).encode(), "text/plain"
    )
    row = row_of(results, study_uid)
    assert row["status"] == "stored" and row["calling_ae"].startswith(ORTHANC_AET)
    (seg,) = seg_series(DICOMwebClient(tls_orthanc.dicomweb), study_uid)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(files[0]).SeriesInstanceUID
    (line,) = [x for x in audit(node.settings.output, 1) if x["calling_ae"] == ORTHANC_AET]
    assert line["outcome"] == "accepted" and line["reason"] == "released" and line["called_ae"] == NODE_AET
    assert (line["series"], line["instances"], line["refused_instances"]) == (1, 4, 0)
    pixels = sum(len(pydicom.dcmread(f).PixelData) for f in files)
    assert pixels < line["bytes"] <= sum(f.stat().st_size for f in files)


def test_with_tls_a_ca_signed_client_stores_and_plain_or_self_signed_clients_get_no_association(
    tmp_path, pki, secure_node, tls_orthanc
):
    node, results = secure_node
    output, port = node.settings.output, node.settings.port
    study_uid = generate_uid()
    _, files = study_series(tmp_path / "series", study_uid)
    before = len(audit(output, 0))
    assert not associate(port).is_established  # plain TCP
    assert not associate(port, tls=pki.client("stranger")).is_established  # self-signed
    refused = audit(output, before + 2)[before:]
    assert all(x["outcome"] == "no association" and "TLS handshake failed" in x["reason"] for x in refused)
    assert store(associate(port, tls=pki.client("client")), files) == [0] * 4
    assert row_of(results, study_uid)["status"] == "stored"
    assert len(seg_series(DICOMwebClient(tls_orthanc.dicomweb), study_uid)) == 1


def test_anyone_allowed_only_when_written_out_and_then_with_a_warning(tmp_path, secure_node, caplog):
    node, _ = secure_node
    anyone = DicomNode(
        node.segmenter,
        NodeSettings(
            output=tmp_path / "node", port=free_port(), allow=(parse_sender("*@*"),), reserve_gb=TEST_RESERVE_GB
        ),
    )
    with caplog.at_level(logging.INFO, logger="common.pacs.node"):
        anyone.start()
    try:
        assert store(associate(anyone.settings.port, calling="ANYONE", source=OTHER_HOST), []) == []
    finally:
        anyone.stop()
    assert "--allow *@*: accepted from ANY address" in caplog.text
    assert "registered senders: *@*" in caplog.text


# ----------------------------------------------------------------------------- the disk reserve, a full disk

DISK_MB = 32  # the tmpfs the node writes to
RESERVE_GB = 0.016  # 16 MB of its 33.5 MB


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory) -> Path:
    """A 32 MiB tmpfs (unmounted at the end); skipped with the reason where it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the node's output needs root")
    mount = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def ballast(disk: Path, leave: int) -> Path:
    """A file that fills ``disk`` until ``leave`` bytes are free."""
    path = disk / "ballast"
    with open(path, "wb") as handle:
        handle.write(bytes(shutil.disk_usage(disk).free - leave))
    return path


@pytest.fixture(scope="module")
def reserve_node(tmp_path_factory, small_disk):
    """A node with the defaults (no --allow: loopback peers only) writing to the tmpfs with a 16 MB reserve."""
    tmp = tmp_path_factory.mktemp("reserve-node")
    settings = NodeSettings(output=small_disk / "node", port=free_port(), reserve_gb=RESERVE_GB, quiet_seconds=4.0)
    node = serve(
        copy_bundle(tmp, BUNDLE, spatial_size=SIZE),
        settings,
        SegmentOptions(device="cpu", network=IntensityThreshold()),
    )
    results = Results()
    node.on_result = results.add
    yield node, results
    node.stop()


def test_below_the_reserve_associations_are_refused_as_transient_until_space_returns(
    tmp_path, small_disk, reserve_node, caplog
):
    node, results = reserve_node
    port, output = node.settings.port, node.settings.output
    study_uid = generate_uid()
    _, files = study_series(tmp_path / "series", study_uid)
    before = len(audit(output, 0))
    with caplog.at_level(logging.INFO, logger="common.pacs.node"):
        weight = ballast(small_disk, leave=int(RESERVE_GB * GB) // 2)
        try:
            for _ in range(2):  # a sender (any AE title on loopback: the default) retrying later
                assert rejection(associate(port, calling="MODALITY", source=OTHER_HOST)) == (2, 3, 2)
            assert not stored_files(output)
        finally:
            weight.unlink()
        # space is back: the same sender succeeds, without a restart
        assert store(associate(port, calling="MODALITY", source=OTHER_HOST), files) == [0] * 4
        assert row_of(results, study_uid)["status"] == "segmented"
    changes = [r.message for r in caplog.records if r.getMessage().startswith("free space on")]
    assert len(changes) == 2 and "below the reserve" in changes[0] and "accepting again" in changes[1]
    lines = audit(output, before + 3)[before:]
    assert [x["outcome"] for x in lines] == ["rejected", "rejected", "accepted"]
    assert all("below the reserve" in x["reason"] for x in lines[:2])
    assert (lines[2]["calling_ae"], lines[2]["peer_address"], lines[2]["instances"]) == ("MODALITY", OTHER_HOST, 4)


def test_below_the_reserve_c_stores_in_an_open_association_answer_a700(tmp_path, small_disk, reserve_node):
    node, results = reserve_node
    study_uid = generate_uid()
    _, files = study_series(tmp_path / "series", study_uid)
    datasets = [pydicom.dcmread(f) for f in files]
    assoc = associate(node.settings.port)
    assert assoc.send_c_store(datasets[0]).Status == 0
    weight = ballast(small_disk, leave=int(RESERVE_GB * GB) // 2)
    try:
        assert [assoc.send_c_store(ds).Status for ds in datasets[1:3]] == [0xA700, 0xA700]
        assert len(stored_files(node.settings.output)) == 1
    finally:
        weight.unlink()
    assert [assoc.send_c_store(ds).Status for ds in datasets[1:]] == [0, 0, 0]  # the sender's retry
    assoc.release()
    row = row_of(results, study_uid)
    assert row["status"] == "segmented" and row["instances"] == 4
    (line,) = [x for x in audit(node.settings.output, 1) if x["instances"] == 4 and x["refused_instances"] == 2]
    assert line["outcome"] == "accepted"


def test_a_disk_that_fills_anyway_gives_failure_statuses_no_partial_file_and_the_node_stays_up(
    tmp_path, small_disk, reserve_node, caplog
):
    node, _ = reserve_node
    output = small_disk / "no-reserve"
    full = DicomNode(node.segmenter, NodeSettings(output=output, port=free_port(), reserve_gb=0, quiet_seconds=60))
    with caplog.at_level(logging.INFO, logger="common.pacs.node"):
        full.start()
    try:
        assert "no --allow: loopback peers only" in caplog.text and "listening on 127.0.0.1" in caplog.text
        _, files = study_series(tmp_path / "series", generate_uid())
        datasets = [pydicom.dcmread(f) for f in files]
        assoc = associate(full.settings.port)
        assert assoc.send_c_store(datasets[0]).Status == 0
        weight = ballast(small_disk, leave=8192)  # less than one instance
        try:
            assert [assoc.send_c_store(ds).Status for ds in datasets[1:]] == [0xA700] * 3
            assert assoc.send_c_echo().Status == 0
            assoc.release()
            assert [p.name for p in stored_files(output)] == [f"{datasets[0].SOPInstanceUID}.dcm"]
            assert store(associate(full.settings.port), []) == []  # a new association: C-ECHO answered
        finally:
            weight.unlink()
        assert store(associate(full.settings.port), files[1:]) == [0] * 3
        kept = sorted(stored_files(output))
        assert sorted(pydicom.dcmread(p).SOPInstanceUID for p in kept) == sorted(d.SOPInstanceUID for d in datasets)
    finally:
        full.stop()


# ----------------------------------------------------------------------------- SIGKILL with all of it on


def stored_series(table: Path) -> set[str]:
    """The series that series.csv says are stored (none before its first row)."""
    return {r["series_uid"] for r in csv_rows(table) if r["status"] == "stored"} if table.exists() else set()


def wait_for_starts(log: Path, count: int, timeout: float = 120) -> None:
    """Wait until the node has logged its start-up ``count`` times (it listens by then)."""
    deadline = time.monotonic() + timeout
    while not (log.exists() and log.read_text().count("DICOM TLS: on") >= count):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else f"no {log}"
        time.sleep(0.1)


@pytest.mark.slow
def test_listen_with_registered_senders_and_tls_recovers_from_sigkill(tmp_path, pki, tls_orthanc):
    port, out = free_port(), tmp_path / "node"
    command = [sys.executable, "-m", "common", "listen", "--bundle", str(foreground_bundle(tmp_path)),
               "--port", str(port), "--ae-title", NODE_AET, "--host", "127.0.0.1", "--allow", f"{CLIENT_AET}@127.0.0.1",
               "--tls-cert", str(pki.cert("node")), "--tls-key", str(pki.key("node")), "--tls-ca", str(pki.ca),
               "--store-to", f"{ORTHANC_AET}@127.0.0.1:{tls_orthanc.dicom_port}", "--store-tls",
               "--reserve-gb", str(TEST_RESERVE_GB), "--output", str(out), "--quiet-seconds", "1", "--device", "cpu"]  # fmt: skip
    study_uid = generate_uid()
    series = [study_series(tmp_path / name, study_uid)[1] for name in ("first", "second")]
    series_uids = {pydicom.dcmread(files[0]).SeriesInstanceUID for files in series}
    client = pki.client("client")
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_starts(out / "node.log", 1)
        assert store(associate(port, tls=client), series[0] + series[1]) == [0] * 8
        wait_for_text(out / "node.log", "segmenting")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        (line,) = audit(out, 1)  # every line whole after the kill
        assert (line["outcome"], line["series"], line["instances"]) == ("accepted", 2, 8)
        process = subprocess.Popen(command, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_starts(out / "node.log", 2)
        assert rejection(associate(port, calling="STRANGER", tls=client)) == (1, 1, 3)
        assert not associate(port).is_established  # plain TCP
        deadline = time.monotonic() + 120
        while stored_series(out / "series.csv") != series_uids:
            assert time.monotonic() < deadline, csv_rows(out / "series.csv")
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    segs = seg_series(DICOMwebClient(tls_orthanc.dicomweb), study_uid)
    assert {seg.ReferencedSeriesSequence[0].SeriesInstanceUID for seg in segs} == series_uids
    assert sorted(x["outcome"] for x in audit(out, 3)[1:]) == ["no association", "rejected"]
