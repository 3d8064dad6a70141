"""docs/tls.md, run as written: its openssl commands, its two servers, its clients.

* The ```sh blocks that make files (no `contimg-server`, `grpcurl` or `contimg` command) run with
  bash in a temporary directory, in order, with the real openssl; what they make is checked to be
  what the page says (subjectAltName, key usages, signed by the CA).
* Each `contimg-server serve` line of the page is started as written (relative paths resolved in
  that directory), plus a free `--port` and `--demo-images 3`, so that reads have something to
  return. Its health is awaited over TLS: the server has no plaintext port.
* The TLS server answers a client that trusts the CA, by name and by address; refuses plaintext and
  a client that trusts only the system's CAs. The mutual-TLS server also refuses a client without
  a certificate, or with one from another CA.
* The page's grpcurl and `contimg` lines and its Python example run against the mutual-TLS server,
  their address rewritten to it, each output checked. grpcurl is found as tests/test_readme.py
  finds it (absent: skipped, or failed when CI is set).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from dsa110.contimg.v1 import images_pb2, images_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_readme import VENV_BIN, activated_env, require_grpcurl, run, sh_commands

from helpers_stress import CONSOLE_SCRIPT, SERVING, ServerProcess

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "tls.md").read_text()
DOC_PORT = "50051"
DEMO_IMAGES = 3
PATH_FLAGS = ("--data-dir", "--tls-cert", "--tls-key", "--tls-client-ca")
BLOCKS = [
    (m["lang"], m["code"])
    for m in re.finditer(r"^```(?P<lang>sh|python)\n(?P<code>.*?)^```$", DOC, re.MULTILINE | re.DOTALL)
]
CONTIMG_TOOLS = ("contimg-server", "grpcurl", "contimg")


def runs_contimg_tools(code: str) -> bool:
    return any(command.split()[0] in CONTIMG_TOOLS for command in sh_commands(code))


MAKES_FILES = [code for lang, code in BLOCKS if lang == "sh" and not runs_contimg_tools(code)]
COMMANDS = [c for lang, code in BLOCKS if lang == "sh" and runs_contimg_tools(code) for c in sh_commands(code)]
SERVE = [shlex.split(c, comments=True) for c in COMMANDS if c.startswith("contimg-server serve ")]
CONNECT = [c for c in COMMANDS if not c.startswith("contimg-server ")]
(PYTHON,) = [code for lang, code in BLOCKS if lang == "python"]


# ---------------------------------------------------------------------------------------------
# The files


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page's openssl commands, run in order in a directory of their own."""
    assert shutil.which("openssl"), "openssl is needed (Debian: apt-get install openssl)"
    directory = tmp_path_factory.mktemp("tls-howto")
    env = activated_env(f"localhost:{DOC_PORT}")
    for code in MAKES_FILES:
        result = run(["bash", "-euo", "pipefail", "-c", code], directory, env)
        assert result.returncode == 0, f"{code}\n{result.stderr}"
    return directory


def certificate(workdir: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((workdir / "tls" / name).read_bytes())


def test_the_page_makes_a_ca_a_server_and_a_client_certificate(workdir: Path) -> None:
    assert len(MAKES_FILES) >= 3, "the CA, the server's and the client's certificates"
    ca = certificate(workdir, "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server, client = certificate(workdir, "server.pem"), certificate(workdir, "client.pem")
    for cert in (server, client):
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for cert, usage in ((server, ExtendedKeyUsageOID.SERVER_AUTH), (client, ExtendedKeyUsageOID.CLIENT_AUTH)):
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    # The keys are the caller's alone: openssl writes them 0600.
    assert all((workdir / "tls" / key).stat().st_mode & 0o077 == 0 for key in ("ca.key", "server.key", "client.key"))


# ---------------------------------------------------------------------------------------------
# The servers


def credentials(workdir: Path, *, ca: bool = True, client: str | None = "client") -> grpc.ChannelCredentials:
    tls = workdir / "tls"
    return grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.pem").read_bytes() if ca else None,
        private_key=(tls / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(tls / f"{client}.pem").read_bytes() if client else None,
    )


async def health(target: str, creds: grpc.ChannelCredentials | None) -> int:
    channel = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return int(reply.status)


async def refused(target: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health(target, creds)
    return err.value.code()


class DocServer(ServerProcess):
    """A `contimg-server serve` line of the page, as written, on a free port, with demo images."""

    def __init__(self, workdir: Path, argv: list[str], name: str):
        super().__init__(workdir, name=name)
        self.workdir = workdir
        self.argv = argv
        self.mutual = "--tls-client-ca" in argv

    def command(self, port: int) -> list[str]:
        assert self.argv[:2] == ["contimg-server", "serve"], self.argv
        args = list(self.argv[2:])
        for i, arg in enumerate(args[:-1]):  # the page's paths are relative to where its commands ran
            if arg in PATH_FLAGS:
                args[i + 1] = str(self.workdir / args[i + 1])
        return [str(CONSOLE_SCRIPT), "serve", *args, "--port", str(port), "--demo-images", str(DEMO_IMAGES)]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return credentials(self.workdir, client="client" if self.mutual else None)

    async def _wait_serving(self, wait_s: float) -> bool:
        """As ServerProcess waits, over TLS (with the client's certificate for mutual TLS)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                if await health(f"localhost:{self.port}", self.channel_credentials()) == SERVING:
                    return True
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
        return False


@pytest.fixture(scope="module")
async def servers(workdir: Path) -> AsyncIterator[dict[bool, DocServer]]:
    """The page's servers by whether they are mutual TLS; started one after the other, so that only
    the first fills the shared data directory with demo images."""
    assert sorted("--tls-client-ca" in argv for argv in SERVE) == [False, True], SERVE
    started: dict[bool, DocServer] = {}
    try:
        for number, argv in enumerate(SERVE):
            server = DocServer(workdir, argv, name=f"server-{number}")
            await server.start()
            started[server.mutual] = server
        yield started
    finally:
        for server in started.values():
            assert server.terminate() == 0, server.log_tail()


async def list_images(target: str, creds: grpc.ChannelCredentials) -> images_pb2.ListImagesResponse:
    async with grpc.aio.secure_channel(target, creds) as channel:
        return await images_pb2_grpc.ImageServiceStub(channel).ListImages(images_pb2.ListImagesRequest(), timeout=10)


async def test_the_tls_server_answers_clients_that_trust_its_ca(servers: dict[bool, DocServer], workdir: Path) -> None:
    server = servers[False]
    for host in ("localhost", "127.0.0.1"):  # both names of the certificate's subjectAltName
        target = f"{host}:{server.port}"
        assert await health(target, credentials(workdir, client=None)) == SERVING
        assert (await list_images(target, credentials(workdir, client=None))).total_size == DEMO_IMAGES
    target = f"localhost:{server.port}"
    assert await refused(target, None) == grpc.StatusCode.UNAVAILABLE  # plaintext
    assert await refused(target, credentials(workdir, ca=False, client=None)) == grpc.StatusCode.UNAVAILABLE


async def test_the_mutual_tls_server_needs_a_certificate_its_ca_signed(
    servers: dict[bool, DocServer], workdir: Path
) -> None:
    server = servers[True]
    target = f"localhost:{server.port}"
    assert await health(target, credentials(workdir)) == SERVING
    assert (await list_images(target, credentials(workdir))).total_size == DEMO_IMAGES
    assert await refused(target, credentials(workdir, client=None)) == grpc.StatusCode.UNAVAILABLE
    assert await refused(target, None) == grpc.StatusCode.UNAVAILABLE  # plaintext
    # A certificate of the right form from another CA: the page's client request, self-signed.
    stranger = run(
        [
            *("openssl", "x509", "-req", "-in", "tls/client.csr", "-signkey", "tls/client.key", "-days", "1"),
            *("-extfile", "tls/client.ext", "-out", "tls/stranger.pem"),
        ],
        workdir,
        activated_env(target),
    )
    assert stranger.returncode == 0, stranger.stderr
    (workdir / "tls" / "stranger.key").write_bytes((workdir / "tls" / "client.key").read_bytes())
    assert await refused(target, credentials(workdir, client="stranger")) == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------------------------------
# The page's clients


def _health_serving(out: str) -> None:
    assert json.loads(out) == {"status": "SERVING"}


def _two_images(out: str) -> None:
    reply = json.loads(out)
    assert len(reply["images"]) == 2 and reply["next_page_token"] and reply["total_size"] == DEMO_IMAGES


def _cli_listing(out: str) -> None:
    header, *rows = out.splitlines()
    assert header.split()[:2] == ["NAME", "TYPE"] and len(rows) == DEMO_IMAGES, out


CHECKS: dict[str, Callable[[str], None]] = {
    r"^grpcurl .*grpc\.health\.v1\.Health/Check$": _health_serving,
    r"^grpcurl .*ImageService/ListImages$": _two_images,
    r"^contimg .*\bimages list$": _cli_listing,
}


def at(code: str, server: DocServer) -> str:
    code = code.replace(f":{DOC_PORT}", f":{server.port}")
    assert DOC_PORT not in code, f"an example names an address the test does not rewrite:\n{code}"
    return code


@pytest.mark.parametrize("command", CONNECT, ids=lambda c: c.split()[0] + "-" + c.split()[-1].rsplit("/")[-1])
def test_the_pages_command(command: str, servers: dict[bool, DocServer], workdir: Path) -> None:
    server = servers[True]
    env = activated_env(f"localhost:{server.port}")
    if command.startswith("grpcurl "):
        require_grpcurl(env)
    (check,) = [check for pattern, check in CHECKS.items() if re.search(pattern, command, re.DOTALL)]
    result = run(["bash", "-euo", "pipefail", "-c", at(command, server)], workdir, env)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    check(result.stdout)


def test_every_command_of_the_page_is_checked() -> None:
    assert len(SERVE) == 2 and len(CONNECT) == len(CHECKS)
    assert all(sum(bool(re.search(p, c, re.DOTALL)) for p in CHECKS) == 1 for c in CONNECT), CONNECT


def test_the_pages_python_client(servers: dict[bool, DocServer], workdir: Path) -> None:
    server = servers[True]
    script = workdir / "example.py"
    script.write_text(at(PYTHON, server))
    result = run([str(VENV_BIN / "python"), str(script)], workdir, activated_env(f"localhost:{server.port}"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{DEMO_IMAGES} images\n"
