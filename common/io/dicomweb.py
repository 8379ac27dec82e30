"""DICOMweb transfers with ``dicomweb-client``: find a study's image series (QIDO-RS), retrieve them into folders
(WADO-RS), and store DICOM SEG files into their study (STOW-RS).

Credentials never come from the command line: ``GDLA_DICOMWEB_TOKEN`` (sent as ``Authorization: Bearer``), or
``GDLA_DICOMWEB_USER`` and ``GDLA_DICOMWEB_PASSWORD`` (HTTP basic), or else a netrc entry for the host (``~/.netrc``
or the file ``NETRC`` names; read by ``requests``). TLS certificates are verified; ``ca_bundle`` names a CA file
for a hospital's own certificate authority. Every failure is a :class:`DicomWebError` naming the URL and the
HTTP status (or the connection problem).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from common.io.atomic import atomic_path

TOKEN_VARIABLE = "GDLA_DICOMWEB_TOKEN"
USER_VARIABLE, PASSWORD_VARIABLE = "GDLA_DICOMWEB_USER", "GDLA_DICOMWEB_PASSWORD"
#: Modalities of series that hold no images to segment (segmentations, structure sets, reports, key objects...).
NON_IMAGE_MODALITIES = frozenset(
    {
        "SEG",
        "RTSTRUCT",
        "RTPLAN",
        "RTDOSE",
        "RTRECORD",
        "SR",
        "PR",
        "KO",
        "DOC",
        "REG",
        "FID",
        "RWV",
        "AU",
        "ECG",
        "PLAN",
    }
)
DEFAULT_ATTEMPTS = 5
#: dcmwrite's request for a standard DICOM file (preamble, file meta): pydicom 3's name, and pydicom 2's (the
#: MONAI Label environment's) for the same thing
STANDARD_FILE = (
    {"enforce_file_format": True} if int(pydicom.__version__.split(".")[0]) >= 3 else {"write_like_original": False}
)
STUDY_UID_TAG, SERIES_UID_TAG, MODALITY_TAG, SERIES_NUMBER_TAG = "0020000D", "0020000E", "00080060", "00200011"
_RESOURCE = re.compile(r"^(?P<root>https?://.+?)/studies/(?P<study>[0-9.]+)(?:/series/(?P<series>[0-9.]+))?/?$")


class DicomWebError(RuntimeError):
    """A DICOMweb request failed; the message names the URL and the HTTP status or connection error."""


@dataclass(frozen=True)
class DicomWebResource:
    """A study (``series_uid`` None) or one series on the DICOMweb service at ``root``."""

    root: str
    study_uid: str
    series_uid: str | None = None

    @property
    def url(self) -> str:
        return f"{self.root}/studies/{self.study_uid}" + (f"/series/{self.series_uid}" if self.series_uid else "")


def is_dicomweb_url(text: str | os.PathLike) -> bool:
    """Whether ``text`` is an ``http://`` or ``https://`` URL (rather than a local path)."""
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


def parse_resource(url: str) -> DicomWebResource:
    """``ROOT/studies/<StudyInstanceUID>[/series/<SeriesInstanceUID>]`` as a :class:`DicomWebResource`."""
    match = _RESOURCE.match(url.strip())
    if not match:
        raise DicomWebError(
            f"{url}: expected a DICOMweb study or series URL, "
            "http(s)://HOST/ROOT/studies/<StudyInstanceUID>[/series/<SeriesInstanceUID>]"
        )
    return DicomWebResource(match["root"], match["study"], match["series"])


def session(ca_bundle: str | os.PathLike | None = None) -> requests.Session:
    """An HTTP session with the credentials from the environment (or netrc) and TLS verification on."""
    http = requests.Session()
    if ca_bundle is not None:
        if not Path(ca_bundle).is_file():
            raise DicomWebError(f"{ca_bundle}: CA bundle not found; expected a PEM file of trusted certificates")
        http.verify = str(ca_bundle)
    token, user = os.environ.get(TOKEN_VARIABLE), os.environ.get(USER_VARIABLE)
    if token:
        http.headers["Authorization"] = f"Bearer {token}"
    elif user:
        http.auth = (user, os.environ.get(PASSWORD_VARIABLE, ""))
    return http  # no auth set: requests falls back to a netrc entry for the host


def client(root: str, ca_bundle: str | os.PathLike | None = None, attempts: int = DEFAULT_ATTEMPTS) -> DICOMwebClient:
    """A ``dicomweb-client`` for the service at ``root`` (e.g. ``http://pacs:8042/dicom-web``).

    A request that cannot connect, or is answered 408, 429, 503 or 504, is tried ``attempts`` times in all, with
    exponential back-off (1 s, 2 s, 4 s, ...: about 30 s for an unreachable server with the default).
    """
    web = DICOMwebClient(url=root.rstrip("/"), session=session(ca_bundle))
    web.set_http_retry_params(retry=attempts > 1, max_attempts=attempts)
    return web


@contextlib.contextmanager
def named_errors(action: str, url: str) -> Iterator[None]:
    """Turn ``requests`` failures inside the block into :class:`DicomWebError` naming ``url`` and the status."""
    try:
        yield
    except requests.HTTPError as exc:
        response = exc.response
        status = f"HTTP {response.status_code} {response.reason}" if response is not None else str(exc)
        hint = ""
        if response is not None and response.status_code in (401, 403):
            hint = (
                f" (credentials come from {TOKEN_VARIABLE}, or {USER_VARIABLE} and {PASSWORD_VARIABLE}, "
                "or a netrc entry for the host)"
            )
        raise DicomWebError(f"{action} {url}: {status}{hint}") from exc
    except requests.RequestException as exc:
        raise DicomWebError(f"{action} {url}: {type(exc).__name__}: {exc}") from exc


def image_series(web: DICOMwebClient, resource: DicomWebResource) -> list[str]:
    """SeriesInstanceUIDs to segment: the resource's series, or every image series of its study (QIDO-RS).

    Series whose modality holds no images (SEG, RTSTRUCT, SR, ...) are left out, so earlier results are not
    read back as inputs.
    """
    if resource.series_uid:
        return [resource.series_uid]
    with named_errors("QIDO-RS", f"{resource.root}/studies/{resource.study_uid}/series"):
        found = web.search_for_series(study_instance_uid=resource.study_uid)
    if not found:
        raise DicomWebError(f"QIDO-RS {resource.url}: the study has no series (or does not exist)")
    images = [
        (_first(entry, SERIES_NUMBER_TAG), _first(entry, SERIES_UID_TAG))
        for entry in found
        if str(_first(entry, MODALITY_TAG) or "").upper() not in NON_IMAGE_MODALITIES
    ]
    if not images:
        modalities = sorted({str(_first(entry, MODALITY_TAG)) for entry in found})
        raise DicomWebError(f"QIDO-RS {resource.url}: no image series in the study (modalities {modalities})")
    ordered = sorted(images, key=lambda item: (item[0] is None, item[0] or 0, str(item[1])))
    return [checked_uid(uid, f"QIDO-RS {resource.url}") for _, uid in ordered]


def study_of_series(web: DICOMwebClient, root: str, series_uid: str) -> str | None:
    """The StudyInstanceUID of series ``series_uid`` (QIDO-RS), or ``None`` where the server holds no such series."""
    url = f"{root}/series?SeriesInstanceUID={series_uid}"
    with named_errors("QIDO-RS", url):
        found = web.search_for_series(search_filters={"SeriesInstanceUID": series_uid})
    return checked_uid(_first(found[0], STUDY_UID_TAG), f"QIDO-RS {url}") if found else None


def checked_uid(uid: object, where: str) -> str:
    """``uid`` if it is a valid DICOM UID (digits and dots, at most 64 characters): safe as a file name."""
    if not isinstance(uid, str) or not pydicom.uid.UID(uid).is_valid:
        raise DicomWebError(f"{where}: the server answered an invalid UID {uid!r}")
    return uid


def _first(entry: dict, tag: str) -> object:
    values = entry.get(tag, {}).get("Value") or [None]
    return values[0]


def retrieve_series(web: DICOMwebClient, root: str, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
    """WADO-RS every instance of one series into ``folder`` (``<SOPInstanceUID>.dcm``, each written atomically)."""
    url = f"{root}/studies/{study_uid}/series/{series_uid}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    with named_errors("WADO-RS", url):
        for dataset in web.iter_series(study_uid, series_uid):
            path = folder / f"{checked_uid(str(dataset.get('SOPInstanceUID', '')), url)}.dcm"
            with atomic_path(path) as temporary:
                pydicom.dcmwrite(temporary, dataset, **STANDARD_FILE)
            files.append(path)
    if not files:
        raise DicomWebError(f"WADO-RS {url}: the series has no instances")
    return files


def store_files(web: DICOMwebClient, root: str, files: Sequence[Path]) -> None:
    """STOW-RS the DICOM files into their own studies; a rejection raises :class:`DicomWebError`."""
    for path in files:
        dataset = pydicom.dcmread(path)
        url = f"{root}/studies/{dataset.StudyInstanceUID}"
        with named_errors("STOW-RS", url):
            answer = web.store_instances([dataset], study_instance_uid=dataset.StudyInstanceUID)
        failed = getattr(answer, "FailedSOPSequence", None) if answer is not None else None
        if failed:
            reasons = sorted({f"0x{int(getattr(item, 'FailureReason', 0)):04X}" for item in failed})
            raise DicomWebError(f"STOW-RS {url}: {path.name} was rejected (failure reason {', '.join(reasons)})")
