"""Bearer-token authorization and TLS/mTLS, over real channels."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dsa110.contimg.v1 import jobs_pb2, measurement_sets_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ServerFactory, make_stubs

ENGINES = ("sqlite", "postgres")

WRITE, READ = "w-secret-token-1", "r-secret-token-2"
MS = measurement_sets_pb2.MeasurementSet(path="/stage/ms/2025-10-28T13:30:07.ms", mid_mjd=60976.5)


def _reason(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _create(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> measurement_sets_pb2.MeasurementSet:
    async with grpc.aio.insecure_channel(target) as channel:
        return await make_stubs(channel).ms.UpdateMeasurementSet(
            measurement_sets_pb2.UpdateMeasurementSetRequest(measurement_set=MS, allow_missing=True), metadata=metadata
        )


async def test_writes_need_a_write_token_by_default(server_factory: ServerFactory) -> None:
    srv = await server_factory(allow_anonymous_writes=False, write_tokens=WRITE, read_tokens=READ)
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await _create(srv.target)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _reason(anonymous.value) == "UNAUTHENTICATED"
    with pytest.raises(grpc.aio.AioRpcError) as reader:
        await _create(srv.target, _auth(READ))
    assert reader.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(reader.value) == "PERMISSION_DENIED"
    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await _create(srv.target, _auth("not-a-token"))
    assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Nothing was written by the refused calls.
    async with grpc.aio.insecure_channel(srv.target) as channel:
        listing = await make_stubs(channel).ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest())
        assert listing.total_size == 0
    created = await _create(srv.target, _auth(WRITE))
    assert created.path == MS.path


async def test_no_token_configured_refuses_every_write(server_factory: ServerFactory) -> None:
    srv = await server_factory(allow_anonymous_writes=False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(srv.target)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reads_are_open_unless_required(server_factory: ServerFactory) -> None:
    open_srv = await server_factory(allow_anonymous_writes=False, write_tokens=WRITE)
    async with grpc.aio.insecure_channel(open_srv.target) as channel:
        stubs = make_stubs(channel)
        page = await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest())
        assert page.total_size == 0

    closed = await server_factory(  # on the same database
        allow_anonymous_writes=False,
        write_tokens=WRITE,
        read_tokens=READ,
        require_read_token=True,
    )
    async with grpc.aio.insecure_channel(closed.target) as channel:
        stubs = make_stubs(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=_auth(READ))).total_size == 0
        assert (await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=_auth(WRITE))).total_size == 0
        # Health stays open for load balancers, even here.
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_tokens_never_reach_the_log(server_factory: ServerFactory, capsys: pytest.CaptureFixture[str]) -> None:
    srv = await server_factory(allow_anonymous_writes=False, write_tokens=WRITE, log_rpcs=True)
    await _create(srv.target, _auth(WRITE))
    with pytest.raises(grpc.aio.AioRpcError):
        await _create(srv.target, _auth("wrong-" + WRITE))
    # An aborted call's status goes out before the server's handler finishes (and logs): the
    # client may see the error first. Wait for the line, up to a bound.
    text = ""
    for _ in range(500):
        assert srv.server.access is not None
        srv.server.access.flush()
        text += capsys.readouterr().err
        if "UNAUTHENTICATED" in text:
            break
        await asyncio.sleep(0.01)
    assert "UpdateMeasurementSet" in text and "UNAUTHENTICATED" in text
    assert WRITE not in text


# ---- TLS ---------------------------------------------------------------------------------------


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None, *, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client certificate, all made on the fly."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("contimg-test-ca", ca_key, None, ca=True)
    files: dict[str, bytes] = {"ca.pem": _pem(ca)}
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{who}.pem"] = _pem(
            _cert("localhost" if who == "server" else "pipeline", key, ("contimg-test-ca", ca_key), ca=False)
        )
        files[f"{who}-key.pem"] = _pem(key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    files["stranger.pem"] = _pem(_cert("stranger", other_key, None, ca=False))
    files["stranger-key.pem"] = _pem(other_key)
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


def _tls_channel(port: int, pki: dict[str, Path], cert: str | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["ca.pem"].read_bytes(),
        private_key=pki[f"{cert}-key.pem"].read_bytes() if cert else None,
        certificate_chain=pki[f"{cert}.pem"].read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


async def test_tls_refuses_plaintext_clients(server_factory: ServerFactory, pki: dict[str, Path]) -> None:
    srv = await server_factory(tls_cert=str(pki["server.pem"]), tls_key=str(pki["server-key.pem"]))
    async with _tls_channel(srv.port, pki) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(f"localhost:{srv.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _health(plain)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_rejects_clients_without_a_trusted_certificate(
    server_factory: ServerFactory, pki: dict[str, Path]
) -> None:
    srv = await server_factory(
        tls_cert=str(pki["server.pem"]), tls_key=str(pki["server-key.pem"]), tls_client_ca=str(pki["ca.pem"])
    )
    async with _tls_channel(srv.port, pki, cert="client") as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    for cert in (None, "stranger"):
        async with _tls_channel(srv.port, pki, cert=cert) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _health(channel)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
