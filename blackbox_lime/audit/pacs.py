"""Audits straight from PACS: the cases of a DICOMweb study or search (QIDO-RS), their files (WADO-RS), and the
Parametric Maps stored back (STOW-RS), through ``dicomweb-client``.

A source URL is one of

- a study: ``https://pacs/dicom-web/studies/UID`` (and ``.../studies/UID/series/UID`` for one series);
- a search: ``https://pacs/dicom-web/studies?ModalitiesInStudy=CR&StudyDate=20260101-20260131``, or
  ``.../series?...`` or ``.../instances?...`` (any QIDO-RS attribute filters).

The DICOMweb root is the path before ``/studies``, ``/series`` or ``/instances``. Every instance found is a case,
in the PACS's (study, series, instance number, SOP instance UID) order; the list is fixed when the audit starts
and kept in the audit's store (a case's ``image`` is ``STUDY/SERIES/INSTANCE``), so a resumed audit explains the
same cases. Instances that hold no image (structured reports, key objects, presentation states, Parametric Maps
and segmentations, RT objects, encapsulated documents, waveforms) are skipped and listed, not failed.

Only the UIDs, SOP class and modality of the search answers are kept; patient fields that a PACS returns are
dropped at once. The report names the source as ``PACS host:port`` and the study UIDs, never the URL's query
(which may carry a patient's name) or credentials.

Auth and TLS as for model endpoints, from a small TOML file (``--pacs-auth``)::

    [auth]
    token_env = "PACS_TOKEN"        # a bearer token (or token_file)
    # username = "audit"            # or basic authentication:
    # password_env = "PACS_PASSWORD"    (or password_file)
    [tls]
    ca_bundle = "site-ca.pem"       # a private CA; client_cert and client_key for mutual TLS
    # verify = true

Plain ``http://`` only to loopback (``--allow-insecure-http`` otherwise).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests

from blackbox_lime.adapters.errors import ConfigError
from blackbox_lime.adapters.http import _first_line
from blackbox_lime.adapters.profile import read_secret, read_toml
from blackbox_lime.adapters.remote import check_endpoint_url, safe_url
from blackbox_lime.audit.source import SourceError, case_id
from blackbox_lime.audit.store import Case

log = logging.getLogger(__name__)

#: SOP classes with no image to explain: skipped and listed (prefix match on the SOP Class UID).
NON_IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.": "a structured report",
    "1.2.840.10008.5.1.4.1.1.11.": "a presentation state",
    "1.2.840.10008.5.1.4.1.1.30": "a Parametric Map",
    "1.2.840.10008.5.1.4.1.1.66": "raw data, registration or segmentation",
    "1.2.840.10008.5.1.4.1.1.104.": "an encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9.": "a waveform",
    **{f"1.2.840.10008.5.1.4.1.1.481.{k}": "an RT plan, structure set or record" for k in range(3, 10)},
    "1.2.840.10008.5.1.4.1.1.88.59": "a key object selection",
}
LEVELS = ("studies", "series", "instances")
_STUDY, _SERIES, _SOP, _CLASS, _MODALITY, _NUMBER, _ROWS = ("0020000D", "0020000E", "00080018", "00080016",
                                                            "00080060", "00200013", "00280010")
_FIELDS = [_CLASS, _MODALITY, _NUMBER, _ROWS]  # includefield: what the case list needs beyond the UIDs


class PacsError(SourceError):
    """The PACS cannot be reached, refused, or answered with something that is not DICOMweb; names the fix."""


def is_pacs_url(source: str | Path) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class PacsLocation:
    """A parsed source URL: the DICOMweb root, what it names, and the search filters."""

    root: str  # scheme://host[:port]/path, no credentials, no query
    level: str  # "study", "series" (a resource) or "studies", "series-search", "instances" (a search)
    study: str | None = None
    series: str | None = None
    filters: tuple[tuple[str, str], ...] = ()

    @property
    def host(self) -> str:
        return urlsplit(self.root).netloc.rsplit("@", 1)[-1]


def parse_pacs_url(url: str, allow_insecure_http: bool = False) -> PacsLocation:
    """The root, level, UIDs and filters of a DICOMweb study, series or search URL; ConfigError naming the fix."""
    try:
        check_endpoint_url(url, allow_insecure_http)
    except ConfigError as exc:
        raise PacsError(str(exc).replace("endpoint", "PACS")) from None
    parts = urlsplit(url)  # credentials in it were refused above, as for model endpoints
    segments = [s for s in parts.path.split("/") if s]
    where = next((i for i, s in enumerate(segments) if s in LEVELS), None)
    if where is None:
        raise PacsError(f"{safe_url(url)} names no DICOMweb resource: give a study (.../studies/UID), a series "
                        "(.../studies/UID/series/UID) or a search (.../studies?..., .../series?..., .../instances?...).")
    root = urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(segments[:where]), "", "")).rstrip("/")
    rest = segments[where:]
    filters = tuple(parse_qsl(parts.query, keep_blank_values=False))
    if rest == ["studies"]:
        return PacsLocation(root, "studies", filters=filters)
    if rest == ["series"]:
        return PacsLocation(root, "series-search", filters=filters)
    if rest == ["instances"]:
        return PacsLocation(root, "instances", filters=filters)
    if len(rest) == 2 and rest[0] == "studies":
        return PacsLocation(root, "study", rest[1], filters=filters)
    if len(rest) == 4 and rest[0] == "studies" and rest[2] == "series":
        return PacsLocation(root, "series", rest[1], rest[3], filters=filters)
    raise PacsError(f"{safe_url(url)}: {'/'.join(rest)!r} is not a study, series or search; give .../studies/UID, "
                    ".../studies/UID/series/UID, or a search such as .../studies?ModalitiesInStudy=CR.")


@dataclass
class PacsAuth:
    """--pacs-auth: a bearer token or basic credentials, and TLS settings, for the PACS."""

    auth: dict[str, Any] = field(default_factory=dict)
    tls: dict[str, Any] = field(default_factory=dict)
    source: str = "--pacs-auth"

    KEYS = {"auth": {"token_env", "token_file", "username", "password_env", "password_file"},
            "tls": {"verify", "ca_bundle", "client_cert", "client_key"}}

    @classmethod
    def from_toml(cls, path: str | Path) -> PacsAuth:
        p = Path(path)
        doc = read_toml(p, f"--pacs-auth {p.name}: no such file. Give a TOML file with [auth] and [tls].")
        if "token" in (doc.get("auth") or {}) or "password" in (doc.get("auth") or {}):
            raise ConfigError(f"{p.name} holds a secret in clear; secrets are never written in these files. Use "
                              "token_env / password_env (an environment variable) or token_file / password_file.")
        for key in set(doc) - set(cls.KEYS):
            raise ConfigError(f"{p.name}: unknown table or key {key!r}; known: [auth], [tls].")
        for section, allowed in cls.KEYS.items():
            unknown = sorted(set(doc.get(section, {})) - allowed)
            if unknown:
                raise ConfigError(f"{p.name}: unknown key {unknown[0]!r} in [{section}]; known keys: "
                                  f"{', '.join(sorted(allowed))}.")
        base = p.resolve().parent
        for section, key in (("auth", "token_file"), ("auth", "password_file"), ("tls", "ca_bundle"),
                             ("tls", "client_cert"), ("tls", "client_key")):
            v = (doc.get(section) or {}).get(key)
            if v:
                q = Path(v).expanduser()
                doc[section][key] = str(q if q.is_absolute() else base / q)
        return cls(dict(doc.get("auth", {})), dict(doc.get("tls", {})), p.name)

    def _secret(self, env_key: str, file_key: str) -> str | None:
        return read_secret(self.auth, env_key, file_key, self.source,
                           "password" if env_key.startswith("password") else "token")

    def secrets(self) -> list[str]:
        return [s for s in (self._secret("token_env", "token_file"), self._secret("password_env", "password_file"))
                if s]

    def apply(self, session: requests.Session) -> None:
        token = self._secret("token_env", "token_file")
        password = self._secret("password_env", "password_file")
        user = self.auth.get("username")
        if token and user:
            raise ConfigError(f"{self.source}: set either a token or a username and password, not both.")
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        elif user:
            if password is None:
                raise ConfigError(f"{self.source}: [auth] username needs password_env or password_file.")
            session.auth = (str(user), password)
        verify = bool(self.tls.get("verify", True))
        if not verify:
            log.warning("TLS certificate verification is OFF for the PACS")
        session.verify = (self.tls.get("ca_bundle") or True) if verify else False
        if self.tls.get("client_cert"):
            cert = self.tls["client_cert"]
            session.cert = (cert, self.tls["client_key"]) if self.tls.get("client_key") else cert


def _value(item: dict[str, Any], tag: str) -> Any:
    v = (item.get(tag) or {}).get("Value")
    return v[0] if v else None


def non_image_kind(sop_class: str | None) -> str | None:
    """What an instance of ``sop_class`` is when it holds no image to explain, else None."""
    if not sop_class:
        return None
    return next((kind for prefix, kind in sorted(NON_IMAGE_SOP_CLASSES.items(), key=lambda kv: -len(kv[0]))
                 if sop_class == prefix.rstrip(".") or sop_class.startswith(prefix)), None)


class Pacs:
    """One DICOMweb server: searches, retrievals and stores, with the errors named.

    Parameters
    ----------
    root : the DICOMweb root (``https://host/dicom-web``). auth : :class:`PacsAuth` or None.
    allow_insecure_http : plain http:// to a host that is not loopback. timeout : seconds per request.
    attempts : tries of a retrieval or a store that could not connect (a PACS restarting), 1 s apart, doubling.
    """

    def __init__(self, root: str, auth: PacsAuth | None = None, *, allow_insecure_http: bool = False,
                 timeout: float = 60.0, attempts: int = 4) -> None:
        from dicomweb_client.api import DICOMwebClient

        try:
            check_endpoint_url(root, allow_insecure_http)
        except ConfigError as exc:
            raise PacsError(str(exc).replace("endpoint", "PACS")) from None
        self.root, self.attempts = root.rstrip("/"), max(1, attempts)
        self.host = urlsplit(self.root).netloc
        self.session = requests.Session()
        self.session.trust_env = False  # the configured PACS only: no proxy or netrc from the environment
        self.session.headers["User-Agent"] = "blackbox-lime"
        if auth is not None:
            auth.apply(self.session)
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its debug lines carry request headers
        self.client = DICOMwebClient(url=self.root, session=self.session, timeout=timeout)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Pacs:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- errors ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], Any], retry: bool = True) -> Any:
        delay = 1.0
        for attempt in range(1, (self.attempts if retry else 1) + 1):
            try:
                return fn()
            except requests.exceptions.SSLError as exc:
                raise PacsError(f"TLS verification failed for the PACS at {self.host}: {_first_line(exc)}. If it uses a "
                                "private CA, set [tls] ca_bundle in the --pacs-auth file.") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                if attempt >= (self.attempts if retry else 1):
                    raise PacsError(f"Could not reach the PACS at {self.host} ({what}): {_first_line(exc)}. Check the URL "
                                    "and that the PACS is up; rerun the same command to go on.") from None
                time.sleep(delay)
                delay *= 2
            except requests.exceptions.HTTPError as exc:
                raise PacsError(self._http_reason(what, exc.response)) from None
            except (ValueError, KeyError, TypeError) as exc:
                raise PacsError(f"The PACS at {self.host} answered {what} with something that is not DICOMweb "
                                f"({_first_line(exc)}). Check that the URL is the DICOMweb root.") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _http_reason(self, what: str, r: requests.Response | None) -> str:
        code = None if r is None else r.status_code
        if code in (401, 403):
            return (f"The PACS at {self.host} refused {what} ({code}): check the credentials in the --pacs-auth "
                    "file.")
        if code == 404:
            return f"The PACS at {self.host} has no such resource ({what}: 404)."
        return f"The PACS at {self.host} answered {what} with HTTP {code}."

    # -- QIDO-RS ------------------------------------------------------------------------------

    def _search(self, what: str, fn: Callable[..., Any], page: int = 1000, **kw: Any) -> list[dict[str, Any]]:
        """Every result of a QIDO-RS search, ``page`` at a time (limit and offset). A server that ignores the offset
        (answers the same page again) is caught: the paging stops at the first page that brings nothing new."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        offset = 0
        while True:
            part = self._call(what, lambda: fn(limit=page, offset=offset, **kw))
            if not isinstance(part, list):
                raise PacsError(f"The PACS at {self.host} answered {what} with something that is not DICOMweb JSON. "
                                "Check that the URL is the DICOMweb root.")
            new = [item for item in part if json.dumps(item, sort_keys=True) not in seen]
            seen.update(json.dumps(item, sort_keys=True) for item in new)
            out += new
            if len(part) < page or not new:
                return out
            offset += len(part)

    def instances(self, loc: PacsLocation) -> list[dict[str, Any]]:
        """Every instance the location names: [{study, series, sop, sop_class, modality, number}] in order."""
        filters = dict(loc.filters)
        found: list[dict[str, Any]] = []
        if loc.level in ("study", "series"):
            found = self._search("the instance search", self.client.search_for_instances,
                                 study_instance_uid=loc.study, series_instance_uid=loc.series,
                                 search_filters=filters or None, fields=_FIELDS)
            if not found:
                what = f"series {loc.series}" if loc.level == "series" else f"study {loc.study}"
                raise PacsError(f"The PACS at {self.host} has no {what} (the search found no instances). Check the "
                                "UID.")
        elif loc.level == "instances":
            found = self._search("the instance search", self.client.search_for_instances,
                                 search_filters=filters or None, fields=_FIELDS)
        else:
            if loc.level == "studies":
                groups = self._search("the study search", self.client.search_for_studies,
                                      search_filters=filters or None)
                keys = [(_value(g, _STUDY), None) for g in groups]
            else:
                groups = self._search("the series search", self.client.search_for_series,
                                      search_filters=filters or None)
                keys = [(_value(g, _STUDY), _value(g, _SERIES)) for g in groups]
            for study, series in keys:
                found += self._search("the instance search", self.client.search_for_instances,
                                      study_instance_uid=study, series_instance_uid=series, fields=_FIELDS)
        if not found:
            raise PacsError(f"The search at the PACS {self.host} found nothing. Check the filters.")
        out = []
        for item in found:
            if not isinstance(item, dict):
                raise PacsError(f"The PACS at {self.host} answered the search with something that is not DICOMweb "
                                "JSON. Check that the URL is the DICOMweb root.")
            uid = {"study": _value(item, _STUDY), "series": _value(item, _SERIES), "sop": _value(item, _SOP)}
            if not all(isinstance(v, str) and v for v in uid.values()):
                raise PacsError(f"The PACS at {self.host} listed an instance without its study, series or SOP "
                                "instance UID.")
            number = _value(item, _NUMBER)
            out.append({**uid, "sop_class": _value(item, _CLASS), "modality": _value(item, _MODALITY),
                        "number": int(number) if isinstance(number, (int, float)) else 0,
                        "rows": _value(item, _ROWS)})
        if any(o["rows"] is not None for o in out):  # the PACS lists Rows: an instance without them has no image
            for o in out:
                o["no_pixels"] = o["rows"] is None
        unique = {(o["study"], o["series"], o["sop"]): o for o in out}
        return sorted(unique.values(), key=lambda o: (o["study"], o["series"], o["number"], o["sop"]))

    # -- WADO-RS ------------------------------------------------------------------------------

    def retrieve(self, study: str, series: str, sop: str) -> bytes:
        """One instance as a DICOM file's bytes."""
        import pydicom

        ds = self._call("the retrieval of an instance", lambda: self.client.retrieve_instance(study, series, sop))
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        return buf.getvalue()

    # -- STOW-RS ------------------------------------------------------------------------------

    def store(self, files: Iterable[bytes], study: str | None = None) -> dict[str, Any]:
        """Store DICOM files (STOW-RS; to ``.../studies/STUDY`` when ``study`` is given). Returns {"state": "stored",
        "instances": [SOP instance UIDs]} when the server's answer lists every one as stored (storing the same
        instance again is answered so too: its UIDs are deterministic, so no duplicate is made), else raises
        PacsError naming what failed."""
        import pydicom

        datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
        wanted = {str(ds.SOPInstanceUID) for ds in datasets}
        try:
            answer = self._call("the store (STOW-RS)", lambda: self.client.store_instances(
                datasets, study_instance_uid=study))
        except PacsError as exc:
            if "HTTP 409" in str(exc):
                raise PacsError(f"The PACS at {self.host} refused to store the map (409 Conflict: e.g. a --stow "
                                "study URL that is not the map's study); give the DICOMweb root as --stow and rerun "
                                "to store it.") from None
            raise
        stored = {str(i.ReferencedSOPInstanceUID) for i in answer.get("ReferencedSOPSequence", [])}
        failed = {str(i.ReferencedSOPInstanceUID): int(getattr(i, "FailureReason", 0) or 0)
                  for i in answer.get("FailedSOPSequence", [])}
        if failed:
            code = next(iter(failed.values()))
            raise PacsError(f"The PACS at {self.host} did not store {len(failed)} map(s) (failure reason "
                            f"0x{code:04X}).")
        missing = wanted - stored
        if missing:
            raise PacsError(f"The PACS at {self.host} did not confirm {len(missing)} of {len(wanted)} map(s).")
        return {"state": "stored", "instances": sorted(wanted)}

    def count(self, study: str, sop: str) -> int:
        """How many instances of the study carry this SOP instance UID (1 after a store, never 2)."""
        return len(self._call("the instance search", lambda: self.client.search_for_instances(
            study_instance_uid=study, search_filters={"SOPInstanceUID": sop})))


@dataclass
class PacsCases:
    cases: list[Case]
    skipped: list[dict[str, str]]  # {"case": private id, "why": what it is}
    studies: list[str]
    host: str


def read_pacs(source: str, salt: str, auth: PacsAuth | None, allow_insecure_http: bool = False) -> PacsCases:
    """The cases of a DICOMweb source (see the module docstring)."""
    loc = parse_pacs_url(source, allow_insecure_http)
    with Pacs(loc.root, auth, allow_insecure_http=allow_insecure_http) as pacs:
        found = pacs.instances(loc)
    cases: list[Case] = []
    skipped: list[dict[str, str]] = []
    for o in found:
        ref = f"{o['study']}/{o['series']}/{o['sop']}"
        kind = non_image_kind(o["sop_class"]) or ("an instance without pixel data" if o.get("no_pixels") else None)
        if kind is not None:
            skipped.append({"case": case_id(salt, ref), "why": f"{kind}: no image to explain"})
            continue
        cases.append(Case(len(cases), case_id(salt, ref), ref))
    if not cases:
        raise PacsError(f"The source at the PACS {loc.host} holds {len(skipped)} instance(s) and none is an image "
                        f"({', '.join(sorted({s['why'].split(':')[0] for s in skipped}))}).")
    return PacsCases(cases, skipped, sorted({o["study"] for o in found}), loc.host)


def pacs_reference(image: str) -> tuple[str, str, str]:
    """A PACS case's ``image`` (``STUDY/SERIES/INSTANCE``) as its three UIDs."""
    study, series, sop = image.split("/")
    return study, series, sop
