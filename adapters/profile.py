"""Endpoint profiles: one TOML file that says how to reach a vendor's model.

Example (every key but ``url`` is optional; the endpoint's metadata fills in what it can)::

    url = "https://models.vendor.example/v2/models/chest-cls"   # OIP REST; :predict URLs are TF-Serving
    protocol = "oip-rest"          # oip-rest | tfserving | oip-grpc | file (default: from the URL)
    model = "chest-cls"            # OIP model name, if not in the URL
    version = "3"
    calibration = "fill.toml"      # a site calibration (blackbox-lime calibrate), relative to this file: its fill
                                   # is used unless --fill or --calibration is given

    [input]
    size = [224, 224]              # [height, width]
    channels = 3
    layout = "NCHW"                # or NHWC
    dtype = "float32"              # float32 | float16 | float64 | uint8
    mean = [0.485, 0.456, 0.406]   # normalisation of [0, 1] pixels, optional
    std = [0.229, 0.224, 0.225]
    name = "image"                 # input tensor name, if the endpoint has no metadata

    [output]
    kind = "probabilities"         # or "logits", "multilabel" (a probability per finding), "multilabel_logits"
    class_names = ["normal", "abnormal"]
    abnormal_index = 1
    name = "probs"                 # output tensor name

    [auth]
    token_env = "VENDOR_TOKEN"     # or token_file = "secrets/vendor.token" (relative to this file)
    header = "Authorization"
    scheme = "Bearer"              # "" sends the bare token

    [tls]
    verify = true
    ca_bundle = "certs/vendor-ca.pem"
    client_cert = "certs/site.pem"
    client_key = "certs/site.key"

    [limits]
    timeout_s = 60
    connect_timeout_s = 10
    max_batch = 32
    concurrency = 4
    rate_per_s = 10
    budget = 5000                  # hard limit on images sent, retries included
    price_per_1k_images = 0.8      # what the endpoint bills per 1,000 images: explain --dry-run, audit plan and
                                   # audit summary state costs with it
    retry_deadline_s = 60          # keep retrying one request this long (a server restart), waits included
    max_attempts = 20              # and at most this many tries (default: as many as the deadline allows)
    retry_after_cap_s = 60
    max_message_mb = 256           # gRPC: the largest message either way
    response_deadline_s = 120      # HTTP: one whole answer, read in full (default: twice timeout_s)
    max_response_mb = 4            # HTTP: the largest inference answer read (default: derived from the request)
    binary = "auto"                # OIP REST binary tensors: auto | always | never

A vendor file API (one encoded image in, labelled scores out) is ``protocol = "file"`` with a ``preset`` and
``[request]`` / ``[response]`` sections: see :mod:`blackbox_lime.adapters.file_api`.

A token is never written in the profile or on the command line: it comes from an environment
variable or a file, and it is redacted from every log line, error and report.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import SplitResult, urlsplit

from .errors import ConfigError
from .file_api import REQUEST_KEYS, RESPONSE_KEYS, FileRequest, FileResponse, resolve_preset
from .remote import RemoteAdapter, RemotePolicy, check_endpoint_url, safe_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _oneof(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _dtypes() -> Any:
    from .preprocess import DTYPE_TO_OIP

    return DTYPE_TO_OIP


def _output_kinds() -> Any:
    from .preprocess import OUTPUT_KINDS

    return OUTPUT_KINDS


@dataclass(frozen=True)
class Key:
    """One key of a profile's section: its check (``ok``, None: any value) and, in words, what it must be
    (``what``, or a callable for words read at check time). A key may have several rows, checked in order."""
    section: str
    name: str
    ok: Callable[[Any], bool] | None = None
    what: str | Callable[[], str] = ""


def _channel_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_is_num(x) for x in v)


#: Every key a profile's sections may hold, with its check: one table for the known keys and the values' checks.
KEYS: tuple[Key, ...] = (
    *(Key("request", k) for k in sorted(REQUEST_KEYS)),  # protocol "file": checked by FileRequest / FileResponse
    *(Key("response", k) for k in sorted(RESPONSE_KEYS)),
    Key("input", "size", lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v),
        "[height, width], two integers >= 1"),
    Key("input", "channels", _oneof(1, 3), "1 or 3"),
    Key("input", "layout", _oneof("NCHW", "NHWC"), '"NCHW" or "NHWC"'),
    Key("input", "dtype", lambda v: v in _dtypes(), lambda: f"one of {', '.join(sorted(_dtypes()))}"),
    Key("input", "mean", _channel_list, "a list of per-channel numbers"),
    Key("input", "std", _channel_list, "a list of per-channel numbers"),
    Key("input", "std", lambda v: min(v) > 0, "positive for every channel"),
    Key("input", "name"),
    Key("output", "kind", lambda v: v in _output_kinds(), lambda: f"one of {', '.join(_output_kinds())}"),
    Key("output", "class_names", lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) for c in v),
        "a list of two or more names"),
    Key("output", "abnormal_index", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Key("output", "name"),
    *(Key("auth", k) for k in ("token_env", "token_file", "header", "scheme")),
    *(Key("tls", k) for k in ("verify", "ca_bundle", "client_cert", "client_key")),
    *(Key("limits", k, lambda v: _is_int(v) and v >= 1, "an integer >= 1")
      for k in ("max_batch", "concurrency", "budget", "max_attempts")),
    *(Key("limits", k, lambda v: _is_num(v) and v > 0, "a number > 0")
      for k in ("timeout_s", "connect_timeout_s", "max_message_mb", "retry_deadline_s", "response_deadline_s",
                "max_response_mb")),
    *(Key("limits", k, lambda v: _is_num(v) and v >= 0, "a number >= 0")
      for k in ("rate_per_s", "retry_after_cap_s", "backoff_s", "price_per_1k_images")),
    Key("limits", "binary", _oneof("auto", "always", "never"), '"auto", "always" or "never"'),
)

_KEYS: dict[str | None, set[str]] = {
    None: {"url", "protocol", "model", "version", "allow_insecure_http", "calibration", "input", "output", "auth", "tls",
           "limits", "preset", "request", "response"},
    **{sec: {k.name for k in KEYS if k.section == sec} for sec in dict.fromkeys(k.section for k in KEYS)},
}


def _check_values(doc: dict[str, Any], name: str) -> None:
    """Every value of a profile has the type and range it needs (:data:`KEYS`, in order): a ConfigError that names
    the key otherwise."""
    for key in KEYS:
        section = doc.get(key.section, {})
        if key.ok is not None and key.name in section and not key.ok(section[key.name]):
            what = key.what() if callable(key.what) else key.what
            raise ConfigError(f"{name}: [{key.section}] {key.name} must be {what}. Got {section[key.name]!r} instead.")


def read_toml(path: Path, missing: str) -> dict[str, Any]:
    """A TOML settings file (endpoint profile, PACS settings): ConfigError ``missing`` when it is no file, and one
    naming the file when it does not parse."""
    if not path.is_file():
        raise ConfigError(missing)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid TOML: {exc}.") from None


def read_secret_file(path: Path, key: str, source: str) -> str:
    """A secret's file, refused unless it is a regular file that only its owner can read (as ssh does with keys):
    a token_file pointing at any other file would send that file's first line to the endpoint as a token."""
    name = path.name
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{source}: the token file named by {key} does not exist: {name}.") from None
    except OSError as exc:
        raise ConfigError(f"{source}: the token file named by {key} cannot be read: {name} ({exc.strerror}).") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{source}: the token file named by {key} is not a regular file: {name}.")
    if os.name == "posix":
        if st.st_mode & 0o077:
            raise ConfigError(f"{source}: the token file {name} can be read or written by other users (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); make it yours alone: chmod 600 {name}.")
        if st.st_uid not in (os.getuid(), 0):
            raise ConfigError(f"{source}: the token file {name} belongs to another user (uid {st.st_uid}); use a file "
                              "of your own, readable only by you (chmod 600).")
    try:
        value = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: the token file {name} is not UTF-8 text.") from None
    if not value.strip():
        raise ConfigError(f"{source}: the token file {name} is empty.")
    return value


def _one_line_token(value: str, where: str, source: str) -> str:
    """The token stripped of surrounding white space; one with a control character inside (a line break that would
    split the header, or a pasted second line) is refused without showing it."""
    token = value.strip()
    bad = [c for c in token if ord(c) < 0x20 or ord(c) == 0x7F]
    if bad:
        kind = "a line break" if any(c in "\r\n" for c in bad) else f"a control character (U+{ord(bad[0]):04X})"
        raise ConfigError(f"{source}: {where} holds {kind} inside the token; a token is one line of printable "
                          "characters. Fix the token (it is not shown here).")
    return token


def read_secret(auth: Mapping[str, Any], env_key: str, file_key: str, source: str,
                what: str = "token") -> str | None:
    """A secret named by an [auth] table: from the environment variable ``auth[env_key]`` or the file
    ``auth[file_key]`` (checked as ssh checks a key file), one line; None when neither is set. Shared by endpoint
    profiles and the PACS's --pacs-auth file."""
    env, file = auth.get(env_key), auth.get(file_key)
    if env and file:
        raise ConfigError(f"{source}: set either [auth] {env_key} or {file_key}, not both.")
    if env:
        value = os.environ.get(str(env))
        if not value:
            raise ConfigError(f"{source}: the environment variable {env} named by [auth] {env_key} is not set.")
        return _one_line_token(value, f"the environment variable {env}", source)
    if file:
        return _one_line_token(read_secret_file(Path(file), f"[auth] {file_key}", source),
                               f"the {what} file {Path(file).name}", source)
    return None


@dataclass
class EndpointProfile:
    """A parsed endpoint profile (see the module docstring for the TOML form)."""

    url: str
    protocol: str
    model: str | None = None
    version: str | None = None
    allow_insecure_http: bool = False
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    auth: dict[str, Any] = field(default_factory=dict)
    tls: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    source: str = "the command line"
    calibration: str | None = None  # the site calibration's path (resolved against the profile's folder)
    preset: str | None = None  # protocol "file": a vendor's documented request and answer
    request: dict[str, Any] = field(default_factory=dict)  # protocol "file": [request], the preset's keys included
    response: dict[str, Any] = field(default_factory=dict)  # protocol "file": [response], likewise

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, path: str | Path, allow_insecure_http: bool = False) -> EndpointProfile:
        """Read a profile; ``allow_insecure_http`` (the command-line flag) adds to the profile's own setting."""
        path = Path(path)
        doc = read_toml(path, f"Endpoint profile not found: {path}. Pass a TOML file (see README, 'Remote models').")
        if "token" in doc or "token" in (doc.get("auth") or {}):
            raise ConfigError(f"{path.name} holds a token in clear; tokens are never written in profiles. Use "
                              "[auth] token_env (an environment variable) or token_file (a file only you can read).")
        for section, allowed in _KEYS.items():
            table = doc if section is None else doc.get(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{path.name}: [{section}] must be a table.")
            unknown = sorted(set(table) - allowed)
            if unknown:
                where = f"[{section}]" if section else "the top level"
                raise ConfigError(f"{path.name}: unknown key {unknown[0]!r} in {where}; known keys: {', '.join(sorted(allowed))}.")
        if "url" not in doc:
            raise ConfigError(f"{path.name} has no 'url'.")
        if not isinstance(doc["url"], str):
            raise ConfigError(f"{path.name}: url must be a string, the endpoint's URL. Got {doc['url']!r} instead.")
        base = path.resolve().parent
        for section, key in (("auth", "token_file"), ("tls", "ca_bundle"), ("tls", "client_cert"), ("tls", "client_key")):
            v = (doc.get(section) or {}).get(key)
            if v:
                doc[section][key] = str((base / Path(v).expanduser()) if not Path(v).expanduser().is_absolute()
                                        else Path(v).expanduser())
        file_keys = [k for k in ("preset", "request", "response") if k in doc]
        protocol = doc.get("protocol") or ("file" if file_keys else None)
        if file_keys and protocol != "file":
            raise ConfigError(f"{path.name}: {file_keys[0]!r} is for protocol = \"file\" (a vendor file API), but the "
                              f"profile says protocol = {protocol!r}. Remove it, or set protocol = \"file\".")
        prof = cls.from_url(str(doc["url"]), protocol=protocol, model=doc.get("model"),
                            version=None if doc.get("version") is None else str(doc["version"]),
                            allow_insecure_http=allow_insecure_http or bool(doc.get("allow_insecure_http", False)))
        prof.input, prof.output = dict(doc.get("input", {})), dict(doc.get("output", {}))
        prof.auth, prof.tls, prof.limits = dict(doc.get("auth", {})), dict(doc.get("tls", {})), dict(doc.get("limits", {}))
        prof.source = path.name
        cal = doc.get("calibration")
        if cal is not None:
            if not isinstance(cal, str) or not cal.strip():
                raise ConfigError(f"{path.name}: calibration must be the path of a calibration file (blackbox-lime "
                                  f"calibrate). Got {cal!r} instead.")
            c = Path(cal).expanduser()
            prof.calibration = str(c if c.is_absolute() else base / c)
        _check_values(doc, path.name)  # before anything reaches the network
        if prof.protocol == "file":
            preset = doc.get("preset")
            if preset is not None and not isinstance(preset, str):
                raise ConfigError(f"{path.name}: preset must be a string. Got {preset!r} instead.")
            try:
                prof.request, prof.response, _ = resolve_preset(preset, doc.get("request", {}), doc.get("response", {}), {})
                FileRequest(**prof.request), FileResponse(**prof.response)
            except ConfigError as exc:
                raise ConfigError(f"{path.name}: {exc.args[0]}") from None
            prof.preset = preset
        return prof

    def auth_settings(self) -> dict[str, Any]:
        """[auth] with a file preset's defaults (Custom Vision's Prediction-Key header) under the profile's own."""
        return resolve_preset(self.preset, {}, {}, self.auth)[2] if self.protocol == "file" else dict(self.auth)

    @classmethod
    def from_url(cls, url: str, protocol: str | None = None, model: str | None = None, version: str | None = None,
                 allow_insecure_http: bool = False) -> EndpointProfile:
        """Read protocol, base URL, model and version from an endpoint URL.

        - ``http(s)://host[:port]/v2/models/NAME[/versions/V]`` : Open Inference Protocol REST
        - ``http(s)://host/...:predict`` : TF-Serving / Vertex AI JSON
        - ``grpc(s)://host:port/NAME[/V]`` : Open Inference Protocol gRPC
        """
        check_endpoint_url(url, allow_insecure_http)
        parts = urlsplit(url)
        if protocol is None:
            protocol = next(p.name for p in PROTOCOLS.values() if p.claims(parts))
        if protocol not in PROTOCOLS:
            raise ConfigError(f"The 'protocol' setting must be one of {', '.join(PROTOCOLS)}. Got {protocol!r} instead.")
        entry = PROTOCOLS[protocol]
        if parts.scheme not in entry.schemes:
            raise ConfigError(f"protocol {protocol!r} needs a {' or '.join(s + '://' for s in entry.schemes)} URL. Got "
                              f"{safe_url(url)}.")
        base, model, version = entry.parse(url, parts, model, version)
        if entry.needs_model and not model:
            raise ConfigError(f"No model name in {safe_url(url)}: use http(s)://host:port/v2/models/NAME, or a profile "
                              "with 'model'.")
        return cls(url=base, protocol=protocol, model=model, version=version, allow_insecure_http=allow_insecure_http)

    # -- secrets ------------------------------------------------------------------------------

    def token(self) -> str | None:
        """The token from [auth] token_env or token_file (checked as ssh checks a key file), or None."""
        return read_secret(self.auth, "token_env", "token_file", self.source)

    # -- the adapter ---------------------------------------------------------------------------

    def policy(self, concurrency: int | None = None) -> RemotePolicy:
        lim = self.limits
        kw: dict[str, Any] = {}
        for key, name in (("timeout_s", "timeout"), ("connect_timeout_s", "connect_timeout"),
                          ("max_attempts", "max_attempts"), ("retry_after_cap_s", "retry_after_cap"),
                          ("retry_deadline_s", "retry_deadline"),
                          ("concurrency", "concurrency"), ("rate_per_s", "rate"), ("backoff_s", "backoff")):
            if key in lim:
                kw[name] = lim[key]
        if concurrency is not None:
            kw["concurrency"] = concurrency
        if kw.get("rate") == 0:
            kw["rate"] = None
        return RemotePolicy(**kw)

    def plan_limits(self, max_batch: int | None = None, budget: int | None = None) -> dict[str, Any]:
        """What a query plan needs, read from the profile alone (nothing is sent): images per request (1 for a
        file endpoint), the budget and the price per 1,000 images (None where not set). Command-line values win."""
        per_request = 1 if self.protocol == "file" else int(max_batch or self.limits.get("max_batch", 32))
        return {"max_batch": per_request, "budget": budget if budget is not None else self.limits.get("budget"),
                "price_per_1k_images": self.limits.get("price_per_1k_images")}

    def build(self, *, budget: int | None = None, max_batch: int | None = None, concurrency: int | None = None,
              allow_insecure_http: bool = False, **overrides: Any) -> RemoteAdapter:
        """Make the adapter. Command-line values (budget, max_batch, concurrency) override the profile's."""
        insecure = allow_insecure_http or self.allow_insecure_http
        token = self.token()
        auth = self.auth_settings()
        scheme = auth.get("scheme", "Bearer")
        header = str(auth.get("header", "Authorization"))
        headers = {header: f"{scheme} {token}" if scheme else token} if token else {}
        policy = overrides.pop("policy", None) or self.policy(concurrency)
        tls = self.tls
        common: dict[str, Any] = dict(headers=headers, verify=bool(tls.get("verify", True)), ca_bundle=tls.get("ca_bundle"),
                      client_cert=tls.get("client_cert"), client_key=tls.get("client_key"),
                      timeout=policy.timeout, allow_insecure_http=insecure)
        adapter_kw: dict[str, Any] = dict(
            input_size=self.input.get("size"), channels=self.input.get("channels"), output=str(self.output.get("kind", "probabilities")),
            class_names=self.output.get("class_names"), abnormal_index=self.output.get("abnormal_index"),
            max_batch=int(max_batch or self.limits.get("max_batch", 32)),
            budget=budget if budget is not None else self.limits.get("budget"),
            policy=policy, secrets=[token] if token else [], **overrides)
        return PROTOCOLS[self.protocol].build(self, common, policy, adapter_kw)


# -- protocols ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """One transport: which URLs it claims when the profile names no protocol, how its URL splits into base,
    model and version, and how its adapter is built. A new protocol is one entry of :data:`PROTOCOLS`."""

    name: str
    schemes: tuple[str, ...]
    claims: Callable[[SplitResult], bool]
    parse: Callable[[str, SplitResult, str | None, str | None], tuple[str, str | None, str | None]]
    build: Callable[[EndpointProfile, dict[str, Any], RemotePolicy, dict[str, Any]], RemoteAdapter]
    needs_model: bool = False


def _tensor_adapter(prof: EndpointProfile, transport: Any, adapter_kw: dict[str, Any], discover: bool) -> RemoteAdapter:
    inp = prof.input
    try:
        return RemoteAdapter(transport, layout=inp.get("layout"), dtype=inp.get("dtype"), mean=inp.get("mean"),
                             std=inp.get("std"), input_name=inp.get("name"), output_name=prof.output.get("name"),
                             discover=discover, **adapter_kw)
    except BaseException:
        transport.close()
        raise


def _http_limits(prof: EndpointProfile, policy: RemotePolicy) -> dict[str, Any]:
    mb = prof.limits.get("max_response_mb")
    return dict(connect_timeout=policy.connect_timeout, pool=policy.concurrency,
                response_deadline=prof.limits.get("response_deadline_s"),
                max_response_bytes=None if mb is None else int(float(mb) * (1 << 20)))


def _parse_grpc(url: str, parts: SplitResult, model: str | None, version: str | None
                ) -> tuple[str, str | None, str | None]:
    segs = [s for s in parts.path.split("/") if s]
    if segs:
        model = model or segs[0]
        version = version or (segs[1] if len(segs) > 1 else None)
    return f"{parts.scheme}://{parts.netloc}", model, version


def _parse_oip_rest(url: str, parts: SplitResult, model: str | None, version: str | None
                    ) -> tuple[str, str | None, str | None]:
    path = parts.path
    if "/v2/models/" in path:
        prefix, rest = path.split("/v2/models/", 1)
        segs = [s for s in rest.split("/") if s]
        if segs and segs[-1] in ("infer", "ready"):
            segs = segs[:-1]
        if segs:
            model = model or segs[0]
        if len(segs) >= 3 and segs[1] == "versions":
            version = version or segs[2]
        path = prefix
    return f"{parts.scheme}://{parts.netloc}{path.rstrip('/')}", model, version


def _build_grpc(prof: EndpointProfile, common: dict[str, Any], policy: RemotePolicy, kw: dict[str, Any]) -> RemoteAdapter:
    from .grpc import OipGrpcTransport

    transport = OipGrpcTransport(prof.url, prof.model or "", prof.version,
                                 max_message_mb=float(prof.limits.get("max_message_mb", 256)), **common)
    return _tensor_adapter(prof, transport, kw, discover=True)


def _build_oip_rest(prof: EndpointProfile, common: dict[str, Any], policy: RemotePolicy,
                    kw: dict[str, Any]) -> RemoteAdapter:
    from .http import OipRestTransport

    transport = OipRestTransport(prof.url, prof.model or "", prof.version, binary=str(prof.limits.get("binary", "auto")),
                                 **_http_limits(prof, policy), **common)
    return _tensor_adapter(prof, transport, kw, discover=True)


def _build_tfserving(prof: EndpointProfile, common: dict[str, Any], policy: RemotePolicy,
                     kw: dict[str, Any]) -> RemoteAdapter:
    from .http import TFServingTransport

    return _tensor_adapter(prof, TFServingTransport(prof.url, **_http_limits(prof, policy), **common), kw, discover=False)


def _build_file(prof: EndpointProfile, common: dict[str, Any], policy: RemotePolicy, kw: dict[str, Any]) -> RemoteAdapter:
    from .file_api import build_file_adapter

    return build_file_adapter(prof.url, prof.request, prof.response, preset=prof.preset,
                              transport_kw={**_http_limits(prof, policy), **common}, adapter_kw=kw)


#: Every protocol, in the order they claim a URL that names none (the last, OIP REST, claims any http(s) URL).
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("oip-grpc", ("grpc", "grpcs"), lambda u: u.scheme in ("grpc", "grpcs"), _parse_grpc, _build_grpc),
    Protocol("tfserving", ("http", "https"), lambda u: u.path.endswith(":predict"),
             lambda url, parts, m, v: (url, m, v), _build_tfserving),
    Protocol("file", ("http", "https"), lambda u: False, lambda url, parts, m, v: (url, m, v), _build_file),
    Protocol("oip-rest", ("http", "https"), lambda u: u.scheme in ("http", "https"), _parse_oip_rest, _build_oip_rest,
             needs_model=True),
)}
