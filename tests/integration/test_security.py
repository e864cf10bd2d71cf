"""TLS, mutual TLS and bearer tokens on a real server (port 0), with certificates made here:
right, wrong and missing tokens; health open to probes; admin RPCs need an admin token."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.client import CvtasksClient
from services.launch import running_server
from services.security import SecurityConfig, read_tokens

USER = "user-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"


def _cert(path, name, *, issuer=None, issuer_key=None, ca=False, server=False):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    (path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all from the CA."""
    path = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _cert(path, "ca", ca=True)
    _cert(path, "server", issuer=ca_cert.subject, issuer_key=ca_key, server=True)
    _cert(path, "client", issuer=ca_cert.subject, issuer_key=ca_key)
    return path


@pytest.fixture(scope="module")
def secured(generator_store, pki):
    security = SecurityConfig(
        tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"), tokens=(USER,), admin_tokens=(ADMIN,)
    )
    with running_server(task="generation", model_store=generator_store, security=security) as address:
        yield address.replace("127.0.0.1", "localhost")


def _client(address, pki, **kwargs):
    return CvtasksClient(address, timeout=30, tls_ca=str(pki / "ca.crt"), **kwargs)


def _code(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_the_right_token_over_tls_is_served(secured, pki):
    with _client(secured, pki, token=USER) as client:
        assert len(client.generate(count=2, seed=1).images) == 2
        assert client.list_models()[0].name == "tiny-generator"


def test_missing_or_wrong_token_is_unauthenticated_and_health_stays_open(secured, pki):
    with _client(secured, pki) as client:
        code, details = _code(lambda: client.generate(count=1))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer" in details
        assert client.health() == "SERVING"  # probes need no secret
    with _client(secured, pki, token="not-the-token-0123456789") as client:
        code, details = _code(lambda: client.list_models())
        assert code == grpc.StatusCode.UNAUTHENTICATED and "not valid" in details


def test_admin_rpcs_need_an_admin_token(secured, pki):
    with _client(secured, pki, token=USER) as client:
        code, details = _code(lambda: client.load_model("tiny-generator"))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "LoadModel needs an admin token" in details
    with _client(secured, pki, token=ADMIN) as admin:
        assert admin.load_model("tiny-generator").ready
        assert len(admin.generate(count=1).images) == 1  # an admin is also a user


def test_a_plaintext_client_cannot_talk_to_the_tls_port(secured):
    with CvtasksClient(secured, timeout=5, token=USER) as client:
        code, _ = _code(lambda: client.generate(count=1))
        assert code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(generator_store, pki):
    security = SecurityConfig(
        tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"), tls_client_ca=str(pki / "ca.crt")
    )
    with running_server(task="generation", model_store=generator_store, security=security) as address:
        address = address.replace("127.0.0.1", "localhost")
        with _client(address, pki, tls_cert=str(pki / "client.crt"), tls_key=str(pki / "client.key")) as client:
            assert len(client.generate(count=1).images) == 1
        with CvtasksClient(address, timeout=5, tls_ca=str(pki / "ca.crt")) as anonymous:
            code, _ = _code(lambda: anonymous.generate(count=1))
            assert code == grpc.StatusCode.UNAVAILABLE


def test_tokens_come_from_files_and_environment_and_bad_settings_are_refused(tmp_path, monkeypatch, pki):
    path = tmp_path / "tokens"
    path.write_text(f"# service accounts\n{USER}\n\n  {ADMIN}  \n")
    monkeypatch.setenv("CVTASKS_TOKENS", "env-token-0123456789abcdef, other-token-0123456789ab")
    assert read_tokens(path, env="CVTASKS_TOKENS") == (
        USER,
        ADMIN,
        "env-token-0123456789abcdef",
        "other-token-0123456789ab",
    )
    with pytest.raises(FileNotFoundError, match="no such token file"):
        read_tokens(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least 16 characters"):
        SecurityConfig(tokens=("short",))
    with pytest.raises(ValueError, match="both a certificate and its key"):
        SecurityConfig(tls_cert=str(pki / "server.crt"))
    with pytest.raises(ValueError, match="admin tokens need user tokens"):
        SecurityConfig(admin_tokens=(ADMIN,))
    assert USER not in repr(SecurityConfig(tokens=(USER,)))  # secrets stay out of logs


def test_the_container_health_check_passes_over_tls_without_a_token(secured, pki, monkeypatch):
    from services.healthcheck import main

    monkeypatch.setenv("CVTASKS_TLS_CERT", str(pki / "server.crt"))
    monkeypatch.setenv("CVTASKS_TLS_CA", str(pki / "ca.crt"))  # the trust root for the check
    assert main([secured]) == 0
    monkeypatch.delenv("CVTASKS_TLS_CERT")
    monkeypatch.delenv("CVTASKS_TLS_CA")
    assert main([secured]) == 1  # plaintext against the TLS port: not healthy


def test_the_container_health_check_on_a_plaintext_server(generator_store):
    from services.healthcheck import main

    with running_server(task="generation", model_store=generator_store) as address:
        assert main([address]) == 0
    assert main([address]) == 1  # nothing listens any more


# --------------------------------------------------------------------------- /metrics and the health port


def _scrape(url, *, token=None, context=None):
    """(HTTP status, body) of one GET of ``url``."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _tls_context(pki, *, client=False):
    import ssl

    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client:
        context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return context


def test_metrics_need_a_token_and_tls_when_the_server_has_them(generator_store, pki):
    import urllib.request

    security = SecurityConfig(
        tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"), tokens=(USER,), admin_tokens=(ADMIN,)
    )
    with running_server(task="generation", model_store=generator_store, security=security, metrics_port=0) as address:
        with _client(address.replace("127.0.0.1", "localhost"), pki, token=USER) as client:
            client.generate(count=1)
        url = address.metrics_url.replace("127.0.0.1", "localhost")
        assert url.startswith("https://")
        context = _tls_context(pki)
        status, body = _scrape(url, context=context)
        assert status == 401 and "Authorization: Bearer" in body and "cvtasks_requests_total" not in body
        assert _scrape(url, token="not-the-token-0123456789", context=context)[0] == 401
        for token in (USER, ADMIN):  # a user or an admin token
            status, body = _scrape(url, token=token, context=context)
            assert status == 200 and 'cvtasks_requests_total{method="/cvtasks.v1.GenerationService/Generate"' in body
        with pytest.raises(OSError):  # plain HTTP gets no answer from the TLS port (reset, or URLError)
            urllib.request.urlopen(url.replace("https://", "http://"), timeout=10)


def test_metrics_under_mutual_tls_need_a_client_certificate(generator_store, pki):

    security = SecurityConfig(
        tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"), tls_client_ca=str(pki / "ca.crt")
    )
    with running_server(task="generation", model_store=generator_store, security=security, metrics_port=0) as address:
        url = address.metrics_url.replace("127.0.0.1", "localhost")
        status, body = _scrape(url, context=_tls_context(pki, client=True))
        assert status == 200 and "cvtasks_queue_depth" in body
        with pytest.raises(OSError):  # URLError, SSLError: the handshake or the first read fails
            _scrape(url, context=_tls_context(pki))


def test_without_tokens_or_tls_metrics_are_plain_http(generator_store):
    with running_server(task="generation", model_store=generator_store, metrics_port=0) as address:
        assert address.metrics_url.startswith("http://")
        status, body = _scrape(address.metrics_url)
        assert status == 200 and "cvtasks_queue_depth" in body


def test_under_mutual_tls_the_health_port_answers_probes_without_a_certificate(generator_store, pki, monkeypatch):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.healthcheck import main

    security = SecurityConfig(
        tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"), tls_client_ca=str(pki / "ca.crt")
    )
    with running_server(task="generation", model_store=generator_store, security=security, health_port=0) as address:
        health = address.health_address
        assert health and health != address
        with CvtasksClient(health, timeout=10) as plain:
            assert plain.health() == "SERVING" and plain.health("cvtasks.v1.GenerationService") == "SERVING"
            code, _ = _code(lambda: plain.generate(count=1))
            assert code == grpc.StatusCode.UNIMPLEMENTED  # health only: nothing else is open on that port
            code, _ = _code(lambda: plain.list_models())
            assert code == grpc.StatusCode.UNIMPLEMENTED
        with grpc.insecure_channel(health) as channel:  # a bad request there is the client's error too
            call = channel.unary_unary(
                "/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None
            )
            code, _ = _code(lambda: call(b"\xff\xff garbage", timeout=10))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            stub = health_pb2_grpc.HealthStub(channel)
            serving = health_pb2.HealthCheckResponse.SERVING
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        # The container health check: the main port wants a client certificate, the health port does not.
        monkeypatch.setenv("CVTASKS_TLS_CERT", str(pki / "server.crt"))
        monkeypatch.setenv("CVTASKS_TLS_CA", str(pki / "ca.crt"))
        monkeypatch.setenv("CVTASKS_PORT", address.rsplit(":", 1)[1])
        assert main([]) == 1
        monkeypatch.setenv("CVTASKS_HEALTH_PORT", health.rsplit(":", 1)[1])
        assert main([]) == 0
        assert main(["--plaintext", health]) == 0
