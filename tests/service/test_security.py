"""Scoped keys and TLS, through the public API (tritonclient.http and tritonclient.grpc, httpx):

- keys: an inference key infers but may not load or unload (403 / PERMISSION_DENIED, and nothing
  changes); an admin key loads (with a config override) and unloads; both keys of a scope work
  (rotation); a wrong key is 401 / UNAUTHENTICATED; ADMIN_API_KEY unset falls back to API_KEY with
  one warning line; API_KEY unset leaves inference open while control needs the admin key.
- TLS: HTTPS and gRPC over TLS with a certificate this test makes (its own CA), plain text to
  the TLS ports fails; with TLS_CLIENT_CA_FILE a client without a certificate (or with one from
  another CA) is refused and one with a certificate of that CA is served.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.routing import APIRoute
from tritonclient.utils import InferenceServerException

from service import cli
from service.dataplane.auth import KeyRing, Scope
from service.errors import Forbidden, Unauthorized
from service.http import v2
from service.http.dispatch import FastRoute
from service.settings import Settings
from tests.helpers import MODELS, ROOT, TLS, LiveServer, live_server

INFERENCE_KEYS = ("inference-old-key", "inference-new-key")
ADMIN_KEYS = ("admin-old-key", "admin-new-key")
WRONG = "not-a-key"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}  # gRPC metadata keys are lower case


def coords_input(module: type[tgrpc.InferInput] | type[thttp.InferInput]) -> list:
    x = module("coords", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[10, 20]], np.float32))
    return [x]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name in ("render", "locate"):
        shutil.copytree(MODELS / name, root / name)
    return root


@pytest.fixture(scope="module")
def scoped(repo: Path) -> Iterator[LiveServer]:
    with live_server(
        model_dir=repo,
        api_key=" , ".join(INFERENCE_KEYS),  # blanks around the commas are ignored
        admin_api_key=",".join(ADMIN_KEYS),
        model_control_mode="explicit",
        load_model=["render"],
    ) as live:
        yield live


# Keys over HTTP


def test_http_inference_keys_infer_but_cannot_control_the_repository(scoped: LiveServer) -> None:
    tc = thttp.InferenceServerClient(f"127.0.0.1:{scoped.port}")
    with scoped.client() as c:
        for key in (*INFERENCE_KEYS, *ADMIN_KEYS):  # both of each scope; admin keys infer too
            answer = tc.infer("render", coords_input(thttp.InferInput), headers=bearer(key))
            assert answer.as_numpy("image").shape == (1, 64, 64)
            r = c.post("/v1/render", json={"coords": [[10, 20]]}, headers=bearer(key))
            assert r.status_code == 200, key
        for key in INFERENCE_KEYS:
            index = c.post("/v2/repository/index", headers=bearer(key))
            assert index.status_code == 200  # reading the index is inference's
            for path in (
                "/v2/repository/models/locate/load",
                "/v2/repository/models/render/unload",
            ):
                r = c.post(path, headers=bearer(key))
                assert r.status_code == 403, (key, path)
                assert r.json() == {
                    "error": "this API key may run inference but not control the model "
                    "repository: loading and unloading models needs an admin key (ADMIN_API_KEY)"
                }
            with pytest.raises(InferenceServerException) as caught:
                tc.load_model("locate", headers=bearer(key))
            assert caught.value.status() == "403" and "admin key" in str(caught.value.message())
            with pytest.raises(InferenceServerException) as caught:
                tc.unload_model("render", headers=bearer(key))
            assert caught.value.status() == "403"
    auth = bearer(INFERENCE_KEYS[0])
    assert tc.is_model_ready("render", headers=auth)  # nothing changed
    assert not tc.is_model_ready("locate", headers=auth)
    tc.close()


def test_http_admin_keys_load_with_an_override_and_unload(scoped: LiveServer) -> None:
    tc = thttp.InferenceServerClient(f"127.0.0.1:{scoped.port}")
    old, new = (bearer(k) for k in ADMIN_KEYS)
    tc.load_model("locate", headers=old)
    assert tc.is_model_ready("locate", headers=new)
    tc.unload_model("locate", headers=new)
    assert not tc.is_model_ready("locate", headers=old)
    original = tc.get_model_config("render", headers=old)
    config = {**original, "version_policy": {"specific": {"versions": [1]}}}
    tc.load_model("render", headers=new, config=json.dumps(config))  # an override: admin
    assert tc.get_model_metadata("render", headers=old)["versions"] == ["1"]
    tc.load_model("render", headers=old, config=json.dumps(original))
    assert tc.get_model_metadata("render", headers=old)["versions"] == ["1", "2"]
    tc.close()


def test_http_wrong_or_missing_key_is_401_in_either_scope(scoped: LiveServer) -> None:
    with scoped.client() as c:
        for path in ("/v2/models/render/infer", "/v2/repository/models/locate/load"):
            body = {"inputs": [{"name": "coords", "shape": [1, 2], "datatype": "FP32"}]}
            wrong = c.post(path, json=body, headers=bearer(WRONG))
            assert wrong.status_code == 401 and wrong.json() == {"error": "invalid API key"}
            assert wrong.headers["www-authenticate"] == "Bearer"
            missing = c.post(path, json=body)
            assert missing.status_code == 401
            assert "missing bearer token" in missing.json()["error"]
        wrong = c.post("/v1/render", json={"coords": [[1, 2]]}, headers=bearer(WRONG))
        assert wrong.status_code == 401 and wrong.json() == {"detail": "invalid API key"}
        for open_path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"):
            assert c.get(open_path).status_code == 200, open_path


# Keys over gRPC


def test_grpc_scopes_rotation_and_wrong_keys(scoped: LiveServer) -> None:
    c = tgrpc.InferenceServerClient(f"127.0.0.1:{scoped.grpc_port}")
    assert c.is_server_live() and c.is_server_ready()  # probes need no key
    for key in (*INFERENCE_KEYS, *ADMIN_KEYS):
        answer = c.infer("render", coords_input(tgrpc.InferInput), headers=bearer(key))
        assert answer.as_numpy("image").shape == (1, 64, 64)
    for key in INFERENCE_KEYS:
        assert c.get_model_repository_index(headers=bearer(key)) is not None
        for control in (c.load_model, c.unload_model):
            with pytest.raises(InferenceServerException) as caught:
                control("locate", headers=bearer(key))
            assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
            assert "needs an admin key (ADMIN_API_KEY)" in str(caught.value.message())
    assert not c.is_model_ready("locate", headers=bearer(INFERENCE_KEYS[1]))
    old, new = (bearer(k) for k in ADMIN_KEYS)
    c.load_model("locate", headers=new)
    assert c.is_model_ready("locate", headers=old)
    c.unload_model("locate", headers=old)
    assert not c.is_model_ready("locate", headers=new)
    for call in (
        lambda h: c.infer("render", coords_input(tgrpc.InferInput), headers=h),
        lambda h: c.load_model("locate", headers=h),
        lambda h: c.get_model_metadata("render", headers=h),
    ):
        with pytest.raises(InferenceServerException) as caught:
            call(bearer(WRONG))
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        assert caught.value.message() == "invalid API key"
        with pytest.raises(InferenceServerException) as caught:
            call({})
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    c.close()


# Fallbacks: one key for both scopes (as before scopes), and an admin key only


def test_without_admin_key_the_api_keys_control_too_with_one_warning(
    repo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    one, two = "key-one-3f9a", "key-two-77c1"
    with live_server(
        model_dir=repo, api_key=f"{one},{two}", model_control_mode="explicit", load_model=["render"]
    ) as live:
        tc = thttp.InferenceServerClient(f"127.0.0.1:{live.port}")
        tc.load_model("locate", headers=bearer(one))
        tc.unload_model("locate", headers=bearer(two))
        with pytest.raises(InferenceServerException) as caught:
            tc.load_model("locate", headers=bearer(WRONG))
        assert caught.value.status() == "401"
        g = tgrpc.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
        g.load_model("locate", headers=bearer(two))
        assert tc.is_model_ready("locate", headers=bearer(one))
        g.close()
        tc.close()
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "ADMIN_API_KEY is not set" in line]
    assert len(warnings) == 1, err
    assert "WARNING" in warnings[0]
    assert one not in err and two not in err  # keys never reach the logs


def test_an_admin_key_alone_guards_control_and_leaves_inference_open(repo: Path) -> None:
    with live_server(
        model_dir=repo, admin_api_key="boss", model_control_mode="explicit", load_model=["render"]
    ) as live:
        tc = thttp.InferenceServerClient(f"127.0.0.1:{live.port}")
        assert tc.infer("render", coords_input(thttp.InferInput)).as_numpy("image") is not None
        with pytest.raises(InferenceServerException) as caught:
            tc.load_model("locate")
        assert caught.value.status() == "401"
        assert "ADMIN_API_KEY" in str(caught.value.message())
        tc.load_model("locate", headers=bearer("boss"))
        g = tgrpc.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
        assert g.infer("render", coords_input(tgrpc.InferInput)) is not None
        with pytest.raises(InferenceServerException) as caught:
            g.unload_model("locate")
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        g.unload_model("locate", headers=bearer("boss"))
        assert not tc.is_model_ready("locate")
        g.close()
        tc.close()


def test_the_key_rule() -> None:
    """The rule both front ends call, for every combination of settings."""
    none = KeyRing.of(None, None)
    assert not none.enabled and none.warning is None
    none.check(Scope.ADMIN, "")  # no keys: nothing to check
    both = KeyRing.of("i1, i2", "a1,a2")
    for scope, key in [(Scope.INFERENCE, "i2"), (Scope.INFERENCE, "a1"), (Scope.ADMIN, "a2")]:
        both.check(scope, f"Bearer {key}")
        both.check(scope, f"bearer  {key} ")
    with pytest.raises(Forbidden):
        both.check(Scope.ADMIN, "Bearer i1")
    for header in ("", "Basic i1", "Bearer ", "Bearer i1i2", "Bearer i1,i2", "i1"):
        with pytest.raises(Unauthorized):
            both.check(Scope.INFERENCE, header)
    fallback = KeyRing.of("k", None)
    fallback.check(Scope.ADMIN, "Bearer k")
    assert fallback.warning is not None
    admin_only = KeyRing.of(None, "a")
    admin_only.check(Scope.INFERENCE, "Bearer anything")  # inference open
    with pytest.raises(Unauthorized):
        admin_only.check(Scope.ADMIN, "Bearer anything")
    assert admin_only.warning is None


def test_the_fast_dispatch_reads_both_scopes_off_the_routes() -> None:
    routes = {r.endpoint: r for r in v2.guarded.routes if isinstance(r, APIRoute)}
    assert FastRoute.of(routes[v2.infer]).scopes == (Scope.INFERENCE,)
    load = FastRoute.of(routes[v2.repository_load])
    assert load.scopes == (Scope.INFERENCE, Scope.ADMIN)


# TLS


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
    valid: tuple[datetime.timedelta, datetime.timedelta] | None = None,
) -> x509.Certificate:
    """`valid`: (from, until) relative to now (default: from 5 minutes ago for a day)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    since, until = valid or (-datetime.timedelta(minutes=5), datetime.timedelta(days=1))
    issuer_name, signer = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + since)
        .not_valid_after(now + until)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        # The server's may authenticate a client too (the image's probe presents it).
        usage = [x509.OID_SERVER_AUTH, x509.OID_CLIENT_AUTH] if server else [x509.OID_CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_ca_key = _key(), _key()
    ca = _certificate("coordconv test CA", ca_key, None, ca=True)
    rogue_ca = _certificate("another CA", rogue_ca_key, None, ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    return Pki(
        ca=_write_cert(ca, d / "ca.pem"),
        server_cert=_write_cert(
            _certificate("localhost", server_key, (ca, ca_key), server=True), d / "server.pem"
        ),
        server_key=_write_key(server_key, d / "server.key"),
        client_cert=_write_cert(
            _certificate("a client", client_key, (ca, ca_key)), d / "client.pem"
        ),
        client_key=_write_key(client_key, d / "client.key"),
        rogue_cert=_write_cert(
            _certificate("a stranger", rogue_key, (rogue_ca, rogue_ca_key)), d / "rogue.pem"
        ),
        rogue_key=_write_key(rogue_key, d / "rogue.key"),
    )


def container_probe(live: LiveServer, **tls: Path) -> int:
    """The image's health check (`python -m service.probe`) against `live`, with its TLS
    settings in the environment as the container has them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDCONV_")}
    env["COORDCONV_PORT"] = str(live.port)
    env.update({f"COORDCONV_{k.upper()}": str(v) for k, v in tls.items()})
    probe = [sys.executable, "-m", "service.probe"]
    return subprocess.run(probe, env=env, cwd=ROOT, capture_output=True, timeout=30).returncode


def trusting(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def test_https_and_grpc_over_tls_with_a_certificate_made_here(pki: Pki) -> None:
    with live_server(
        ("render",), tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    ) as live:
        https = f"https://127.0.0.1:{live.port}"
        with httpx.Client(base_url=https, verify=trusting(pki), timeout=30) as c:
            assert c.get("/readyz").status_code == 200
            r = c.post("/v1/render", json={"coords": [[10, 20]], "format": "array"})
            assert r.status_code == 200 and np.asarray(r.json()["images"]).shape == (1, 64, 64)
        with httpx.Client(
            base_url=https.replace("127.0.0.1", "localhost"), verify=trusting(pki)
        ) as c:
            assert c.get("/healthz").status_code == 200  # the DNS name of the certificate too
        with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port
            httpx.get(f"http://127.0.0.1:{live.port}/readyz", timeout=5, verify=TLS)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(
                https + "/readyz", timeout=5, verify=TLS
            )  # the system's CAs do not know this one

        url = f"127.0.0.1:{live.grpc_port}"
        g = tgrpc.InferenceServerClient(url, ssl=True, root_certificates=str(pki.ca))
        assert g.is_server_ready()
        answer = g.infer("render", coords_input(tgrpc.InferInput))
        assert answer.as_numpy("image").shape == (1, 64, 64)
        g.close()
        plain = tgrpc.InferenceServerClient(url)  # plain text to the TLS port
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
        plain.close()
        tls = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
        assert container_probe(live, **tls) == 0  # the health check speaks HTTPS
        assert container_probe(live) == 1  # and needs to


def test_client_certificates_required_with_a_client_ca(pki: Pki) -> None:
    with live_server(
        ("render",),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
    ) as live:
        https = f"https://127.0.0.1:{live.port}"
        mine = trusting(pki, pki.client_cert, pki.client_key)
        with httpx.Client(base_url=https, verify=mine, timeout=30) as c:
            assert c.get("/readyz").status_code == 200
            assert c.post("/v1/render", json={"coords": [[10, 20]]}).status_code == 200
        for refused in (trusting(pki), trusting(pki, pki.rogue_cert, pki.rogue_key)):
            with pytest.raises(httpx.TransportError):
                httpx.get(https + "/readyz", verify=refused, timeout=5)

        url = f"127.0.0.1:{live.grpc_port}"
        g = tgrpc.InferenceServerClient(
            url,
            ssl=True,
            root_certificates=str(pki.ca),
            private_key=str(pki.client_key),
            certificate_chain=str(pki.client_cert),
        )
        assert g.is_server_ready()
        assert g.infer("render", coords_input(tgrpc.InferInput)).as_numpy("image") is not None
        g.close()
        for cert, key in ((None, None), (pki.rogue_cert, pki.rogue_key)):
            stranger = tgrpc.InferenceServerClient(
                url,
                ssl=True,
                root_certificates=str(pki.ca),
                private_key=None if key is None else str(key),
                certificate_chain=None if cert is None else str(cert),
            )
            with pytest.raises(InferenceServerException):
                stranger.is_server_live(client_timeout=5)
            stranger.close()
        tls = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
        assert container_probe(live, **tls) == 1  # no client certificate: refused
        assert container_probe(live, **tls, tls_client_ca_file=pki.ca) == 0  # presents its own


def test_tls_settings_that_cannot_work_are_one_line_at_start(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--tls-cert-file", str(pki.server_cert)]) == 2
    assert "TLS needs both TLS_CERT_FILE and TLS_KEY_FILE" in capsys.readouterr().err
    assert cli.main(["--tls-client-ca-file", str(pki.ca)]) == 2
    assert "TLS_CLIENT_CA_FILE needs TLS_CERT_FILE" in capsys.readouterr().err
    args = ["--port", "0", "--grpc-port", "0", "--tls-cert-file", str(pki.server_cert)]
    assert cli.main([*args, "--tls-key-file", str(pki.client_key)]) == 1  # not its key
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TLS_CERT_FILE / TLS_KEY_FILE cannot be used" in err[0], err


@pytest.mark.parametrize(
    ("since", "until", "says"),
    [
        (-30, -1, "TLS_CERT_FILE expired on "),
        (1, 30, "TLS_CERT_FILE is not valid before "),
    ],
)
def test_an_expired_or_not_yet_valid_certificate_is_refused_at_start(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str], since: int, until: int, says: str
) -> None:
    key = _key()
    days = datetime.timedelta(days=1)
    cert = _certificate("localhost", key, None, server=True, valid=(since * days, until * days))
    args = ["--port", "0", "--grpc-port", "0"]
    tls = ["--tls-cert-file", str(_write_cert(cert, tmp_path / "c.pem"))]
    tls += ["--tls-key-file", str(_write_key(key, tmp_path / "k.pem"))]
    assert cli.main([*args, *tls]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"coordconv serve: {says}"), err
    # an expired client CA too: no client could ever present a certificate it accepts
    ca_key = _key()
    old_ca = _certificate("old CA", ca_key, None, ca=True, valid=(-30 * days, -1 * days))
    good = ["--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)]
    ca = ["--tls-client-ca-file", str(_write_cert(old_ca, tmp_path / "ca.pem"))]
    assert cli.main([*args, *good, *ca]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TLS_CLIENT_CA_FILE expired on " in err[0], err


@pytest.mark.parametrize("setting", ["COORDCONV_API_KEY", "COORDCONV_ADMIN_API_KEY"])
@pytest.mark.parametrize("value", [",", " , ", "  ", ",,, ,"])
def test_a_key_list_with_no_usable_key_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], setting: str, value: str
) -> None:
    monkeypatch.setenv(setting, value)
    assert cli.main(["--port", "0", "--grpc-port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = setting.removeprefix("COORDCONV_")
    assert len(err) == 1 and f"{name} is set but holds no key" in err[0], err
    # unset or empty: that scope is open, as documented (compose passes "" for unset)
    monkeypatch.setenv(setting, "")
    assert Settings().api_key is None and Settings().admin_api_key is None
