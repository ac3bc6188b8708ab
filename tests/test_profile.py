"""Endpoint profiles and endpoint URLs: parsing, validation messages, secrets, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import responses
from fake_endpoint import URL, FakeEndpoint

from blackbox_lime.adapters import ConfigError
from blackbox_lime.adapters.profile import EndpointProfile


@pytest.mark.parametrize("url, protocol, base, model, version", [
    ("https://h.example/v2/models/chest", "oip-rest", "https://h.example", "chest", None),
    ("https://h.example:8443/prefix/v2/models/chest/versions/3", "oip-rest", "https://h.example:8443/prefix", "chest", "3"),
    ("https://h.example/v2/models/chest/infer", "oip-rest", "https://h.example", "chest", None),
    ("https://h.example/v1/models/chest:predict", "tfserving", "https://h.example/v1/models/chest:predict", None, None),
    ("grpcs://h.example:8001/chest/2", "oip-grpc", "grpcs://h.example:8001", "chest", "2"),
    ("grpc://127.0.0.1:8001/chest", "oip-grpc", "grpc://127.0.0.1:8001", "chest", None),
])
def test_url_forms(url: str, protocol: str, base: str, model: str | None, version: str | None) -> None:
    p = EndpointProfile.from_url(url)
    assert (p.protocol, p.url, p.model, p.version) == (protocol, base, model, version)


def test_oip_url_without_model_name() -> None:
    with pytest.raises(ConfigError, match=r"No model name in https://h\.example/: use http\(s\)://host:port/v2/models/NAME"):
        EndpointProfile.from_url("https://h.example/")


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "endpoint.toml"
    p.write_text(text)
    return p


def test_full_profile_is_read(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    p = write(tmp_path, """
url = "https://models.vendor.example/v2/models/chest"
version = 4
[input]
size = [256, 256]
layout = "NHWC"
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[output]
kind = "logits"
class_names = ["no finding", "nodule"]
[auth]
token_file = "secrets/token"
[tls]
ca_bundle = "certs/ca.pem"
[limits]
concurrency = 4
rate_per_s = 8
budget = 3000
timeout_s = 12
""")
    prof = EndpointProfile.from_toml(p)
    assert prof.version == "4" and prof.model == "chest" and prof.input["layout"] == "NHWC"
    assert Path(prof.tls["ca_bundle"]) == tmp_path.resolve() / "certs" / "ca.pem"
    assert Path(prof.auth["token_file"]) == tmp_path.resolve() / "secrets" / "token"
    pol = prof.policy()
    assert (pol.concurrency, pol.rate, pol.timeout) == (4, 8, 12)
    assert prof.policy(concurrency=2).concurrency == 2


@pytest.mark.parametrize("text, message", [
    ('url = "https://h.example/v2/models/m"\n[limits]\nconcurency = 4\n',
     r"endpoint\.toml: unknown key 'concurency' in \[limits\]; known keys: backoff_s, binary, budget, concurrency"),
    ('url = "https://h.example/v2/models/m"\nprotocl = "oip-rest"\n', r"unknown key 'protocl' in the top level"),
    ('[input]\nsize = [1, 2]\n', r"endpoint\.toml has no 'url'"),
    ('url = "https://h.example/v2/models/m"\nprotocol = "soap"\n',
     r"The 'protocol' setting must be one of oip-grpc, tfserving, file, oip-rest\. Got 'soap' instead\."),
    ('url = \n', r"endpoint\.toml is not valid TOML"),
    ('url = "https://h.example/v2/models/m"\nprotocol = "oip-grpc"\n', r"protocol 'oip-grpc' needs a grpc:// or grpcs:// URL"),
])
def test_profile_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EndpointProfile.from_toml(write(tmp_path, text))


def test_every_checked_key_of_the_table_refuses_a_bad_value_by_name(tmp_path: Path) -> None:
    """The profile's value checks are one table (profile.KEYS): a string where each checked key wants something
    else is refused with the key's section, name and words; a good value passes; std's second row needs its first."""
    from blackbox_lime.adapters.profile import KEYS

    checked = list(dict.fromkeys((k.section, k.name) for k in KEYS if k.ok is not None))
    assert len(checked) == 24
    for section, name in checked:
        text = f'url = "https://h.example/v2/models/m"\n[{section}]\n{name} = "x"\n'
        with pytest.raises(ConfigError) as err:
            EndpointProfile.from_toml(write(tmp_path, text))
        what = next(k.what for k in KEYS if (k.section, k.name) == (section, name))
        what = what() if callable(what) else what
        assert str(err.value) == f"endpoint.toml: [{section}] {name} must be {what}. Got 'x' instead."
    with pytest.raises(ConfigError, match=r"^endpoint\.toml: \[input\] std must be positive for every channel\. "
                                          r"Got \[0\.2, 0\.0\] instead\.$"):
        EndpointProfile.from_toml(write(tmp_path, 'url = "https://h.example/v2/models/m"\n[input]\nstd = [0.2, 0.0]\n'))
    ok = EndpointProfile.from_toml(write(tmp_path, 'url = "https://h.example/v2/models/m"\n[input]\nstd = [0.2, 0.3]\n'
                                                   '[limits]\nbinary = "never"\nrate_per_s = 0\n'))
    assert ok.input["std"] == [0.2, 0.3] and ok.limits == {"binary": "never", "rate_per_s": 0}


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Endpoint profile not found: .*nope\.toml\. Pass a TOML file"):
        EndpointProfile.from_toml(tmp_path / "nope.toml")


def test_token_sources(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    prof = EndpointProfile.from_toml(write(tmp_path, f'url = "{URL}"\n[auth]\ntoken_env = "BBL_TOKEN_X"\n'))
    monkeypatch.delenv("BBL_TOKEN_X", raising=False)
    with pytest.raises(ConfigError, match=r"the environment variable BBL_TOKEN_X named by \[auth\] token_env is not set"):
        prof.token()
    monkeypatch.setenv("BBL_TOKEN_X", "  abc123token \n")
    assert prof.token() == "abc123token"
    (tmp_path / "tok").write_text("filetoken99\n")
    (tmp_path / "tok").chmod(0o600)
    prof2 = EndpointProfile.from_toml(write(tmp_path, f'url = "{URL}"\n[auth]\ntoken_file = "tok"\nheader = "x-api-key"\nscheme = ""\n'))
    assert prof2.token() == "filetoken99"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        ep = FakeEndpoint(rsps).install()
        import numpy as np

        prof2.build().predict(np.zeros((1, 32, 32, 3), np.float32))
        assert ep.headers[0]["x-api-key"] == "filetoken99"


def test_command_line_values_override_the_profile(tmp_path: Path) -> None:
    prof = EndpointProfile.from_toml(write(tmp_path, f'url = "{URL}"\n[limits]\nbudget = 10\nmax_batch = 4\n'))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        FakeEndpoint(rsps).install()
        a = prof.build()
        assert (a.budget, a.max_batch) == (10, 4)
        b = prof.build(budget=99, max_batch=2)
        assert (b.budget, b.max_batch) == (99, 2)


def test_plain_http_in_a_profile_needs_the_opt_in(tmp_path: Path) -> None:
    p = write(tmp_path, 'url = "http://10.0.0.7:8080/v2/models/m"\n')
    with pytest.raises(ConfigError, match=r"Refusing plain http:// to 10\.0\.0\.7"):
        EndpointProfile.from_toml(p)
    assert EndpointProfile.from_toml(p, allow_insecure_http=True).allow_insecure_http is True
    p2 = write(tmp_path, 'url = "http://10.0.0.7:8080/v2/models/m"\nallow_insecure_http = true\n')
    assert EndpointProfile.from_toml(p2).url == "http://10.0.0.7:8080"


def _calibration(path: Path, url: str, model: str, fill: str = "blur") -> Path:
    path.write_text(f'[fill]\nchosen = "{fill}"\ncandidates = ["mae", "mean", "blur"]\n\n'
                    f'[evidence]\nimages = 4\n\n[evidence.model]\nurl = "{url}"\nmodel = "{model}"\n')
    return path


def test_a_profile_names_the_sites_calibration_and_explain_uses_its_fill(tmp_path: Path, capsys) -> None:
    import json

    import cv2
    import numpy as np

    from blackbox_lime import cli

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        FakeEndpoint(rsps).install()
        base = URL.rsplit("/v2/models/", 1)[0]
        (tmp_path / "site").mkdir()
        _calibration(tmp_path / "site" / "fill.toml", base, "linear")
        prof = tmp_path / "vendor.toml"
        prof.write_text(f'url = "{URL}"\ncalibration = "site/fill.toml"\n')
        assert EndpointProfile.from_toml(prof).calibration == str(tmp_path / "site" / "fill.toml")
        img = tmp_path / "x.png"
        cv2.imwrite(str(img), np.random.default_rng(0).uniform(0, 255, (32, 32)).astype(np.uint8))
        opts = ["--patch-size", "8", "--samples", "40", "--quiet"]
        assert cli.main(["explain", str(img), "--endpoint", str(prof), "--out", str(tmp_path / "a"), *opts]) == 0
        report = json.loads((tmp_path / "a" / "x.json").read_text())
        assert report["fill"] == {"mode": "fixed", "chosen": "blur"}
        assert report["models"]["calibration"]["file"] == "fill.toml"
        # the user's own --fill wins over the profile's calibration
        assert cli.main(["explain", str(img), "--endpoint", str(prof), "--out", str(tmp_path / "b"), *opts,
                         "--fill", "mean"]) == 0
        assert json.loads((tmp_path / "b" / "x.json").read_text())["fill"]["chosen"] == "mean"
        # a calibration made for another model is refused
        _calibration(tmp_path / "site" / "fill.toml", base, "another-model")
        capsys.readouterr()
        assert cli.main(["explain", str(img), "--endpoint", str(prof), "--out", str(tmp_path / "c"), *opts]) == 2
        assert "fill.toml was made with another model" in capsys.readouterr().err
    prof.write_text(f'url = "{URL}"\ncalibration = 3\n')
    with pytest.raises(ConfigError, match=r"vendor\.toml: calibration must be the path of a calibration file"):
        EndpointProfile.from_toml(prof)


def test_a_model_value_is_an_endpoint_when_it_is_a_url() -> None:
    """The one test of "is this --model an endpoint" (adapters.is_url) that the CLI, audits and workers share."""
    from blackbox_lime.adapters import is_url

    assert is_url("https://h.example/v2/models/m") and is_url("grpc://127.0.0.1:8081/m")
    assert not is_url("models/chest.onnx") and not is_url(None) and not is_url(Path("a.onnx"))
