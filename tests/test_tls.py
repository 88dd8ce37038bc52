"""TLS on loopback with a CA made as `pinfold up` makes it: a controller and
an agent served over HTTPS, the agent registering, the controller calling the
agent, the CLI listing hosts; a client trusting another CA is refused with
one clear line; plain HTTP off loopback is warned about."""

from __future__ import annotations

import logging
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import pinfold
from pinfold.agent.api import create_app as agent_app
from pinfold.agent.config import ConfigError, advertised_url, load_config
from pinfold.agent.drivers import SimDriver
from pinfold.agent.registration import Registrar, heartbeat_document, registration_document
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.cli import app as cli_app
from pinfold.controller.agents import AgentClient, AgentUnreachableError
from pinfold.controller.api import create_app as controller_app
from pinfold.controller.config import ControllerConfig, load_controller_config
from pinfold.controller.daemon import AgentClients, build_controller
from pinfold.serving import ServerLimits
from pinfold.tls import (
    LocalCertificates,
    client_context,
    local_certificates,
    warn_plain_listener,
    warn_plain_url,
)
from pinfold.topology import Topology
from tests.servers import Served

ADMIN = "admin-token-0123456789abcdef"
AGENT = "agent-token-0123456789abcdef"
I7 = Path(pinfold.__file__).parent / "data" / "topology_i7-1185G7.json"


@dataclass
class TlsNode:
    """A controller and one agent, both over TLS, and the CA they trust."""

    certificates: LocalCertificates
    controller_url: str
    agent_url: str
    agent: Agent
    clients: AgentClients


@pytest.fixture
def node(tmp_path: Path) -> Iterator[TlsNode]:
    certificates = local_certificates(tmp_path / "tls")
    tls = (certificates.cert, certificates.key)
    verify = client_context(certificates.ca)
    controller, clients = build_controller(ControllerConfig(data_dir=tmp_path / "controller"), AGENT, verify)
    served_controller = Served(controller_app(controller, ADMIN, AGENT), tls=tls)
    agent = Agent.open(
        Topology.load(I7), SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu")
    )
    served_agent = Served(agent_app(agent, AGENT), tls=tls)
    try:
        yield TlsNode(certificates, served_controller.url, served_agent.url, agent, clients)
    finally:
        served_agent.stop()
        served_controller.stop()
        clients.close()
        agent.store.close()
        controller.store.engine.dispose()


def registrar(node: TlsNode, ca: Path) -> Registrar:
    return Registrar(
        node.controller_url, AGENT, "h1",
        lambda: registration_document(node.agent, "h1", node.agent_url, AGENT),
        lambda: heartbeat_document(node.agent, None),
        1.0,
        node.certificates.ca.parent / "host.token",
        verify=client_context(ca),
    )  # fmt: skip


def cli(tmp_path: Path, url: str, ca: Path, *args: str) -> tuple[int, str]:
    settings = tmp_path / "cli.toml"
    settings.write_text(f'url = "{url}"\ntoken = "{ADMIN}"\nca_file = "{ca}"\n')
    result = CliRunner().invoke(
        cli_app, list(args), env={"PINFOLD_CLI_CONFIG": str(settings), "COLUMNS": "200"}
    )
    return result.exit_code, result.output


def test_the_agent_registers_the_controller_calls_it_and_the_cli_works_over_tls(
    node: TlsNode, tmp_path: Path
) -> None:
    assert node.controller_url.startswith("https://")
    assert node.agent_url.startswith("https://")
    beats = registrar(node, node.certificates.ca)
    beats.beat()
    assert beats.last_error is None
    assert beats.registered
    with httpx.Client(verify=client_context(node.certificates.ca), timeout=30) as http:
        created = http.post(
            node.controller_url + "/api/v1/vms",
            json={"name": "web", "vcpus": 1, "memory_mib": 256, "ratio": 1.0},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
    assert created.status_code == 201, created.text  # the controller reached the agent over TLS
    assert "web" in node.agent.allocator
    code, out = cli(tmp_path, node.controller_url, node.certificates.ca, "host", "list", "--json")
    assert code == 0, out
    assert [host["id"] for host in __import__("json").loads(out)] == ["h1"]


def test_a_peer_signed_by_another_ca_is_refused_in_one_clear_line(node: TlsNode, tmp_path: Path) -> None:
    other = local_certificates(tmp_path / "other").ca
    code, out = cli(tmp_path, node.controller_url, other, "status")
    assert code == 2
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert "not trusted" in lines[0]
    beats = registrar(node, other)
    beats.beat()
    assert not beats.registered
    assert "not trusted" in (beats.last_error or "")
    client = AgentClient(node.agent_url, AGENT, verify=client_context(other))
    with pytest.raises(AgentUnreachableError, match="not trusted"):
        client.get("web")
    client.close()


def test_plain_http_is_refused_by_a_tls_server(node: TlsNode) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(node.controller_url.replace("https://", "http://") + "/healthz", timeout=5)


def test_tls_settings_and_flags_of_both_daemons(tmp_path: Path) -> None:
    files = local_certificates(tmp_path)
    flags = {"tls_cert": files.cert, "tls_key": files.key, "tls_ca": files.ca, "port": 8443}
    agent = load_config(None, flags, {})
    assert (agent.tls_cert, agent.tls_key, agent.tls_ca) == (files.cert, files.key, files.ca)
    assert advertised_url(agent) == "https://127.0.0.1:8443"
    controller = load_controller_config(None, {}, {"PINFOLD_CONTROLLER_TLS_CERT": str(files.cert),
                                                   "PINFOLD_CONTROLLER_TLS_KEY": str(files.key)})  # fmt: skip
    assert controller.tls_key == files.key
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        load_config(None, {"tls_cert": files.cert}, {})


def test_pinfold_up_certificates_are_private_and_made_once(tmp_path: Path) -> None:
    first = local_certificates(tmp_path / "tls")
    for path in (first.ca, first.cert, first.key, tmp_path / "tls" / "ca.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    content = first.cert.read_bytes()
    assert local_certificates(tmp_path / "tls").cert.read_bytes() == content


def test_plain_http_off_loopback_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pinfold.tls")
    assert warn_plain_listener("pinfold agent", "0.0.0.0", tls=False)
    assert "without TLS" in caplog.text
    assert not warn_plain_listener("pinfold agent", "0.0.0.0", tls=True)
    assert not warn_plain_listener("pinfold agent", "127.0.0.1", tls=False)
    assert not warn_plain_listener("pinfold agent", "localhost", tls=False)
    assert warn_plain_url("pinfold agent", "http://10.0.0.1:8100")
    assert not warn_plain_url("pinfold agent", "https://10.0.0.1:8100")
    assert not warn_plain_url("pinfold agent", "http://127.0.0.1:8100")
    assert not warn_plain_url("pinfold agent", "http://[::1]:8100")


def test_a_tls_server_stops_promptly_though_a_client_keeps_a_connection_open(tmp_path: Path) -> None:
    """TLS's orderly close waits for the peer's answer, which an idle pooled
    client never sends: the daemons must not wait for it when they stop."""
    certificates = local_certificates(tmp_path)
    agent = Agent.open(
        Topology.load(I7), SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu")
    )
    served = Served(agent_app(agent, AGENT), tls=(certificates.cert, certificates.key))
    with httpx.Client(verify=client_context(certificates.ca)) as http:
        assert http.get(served.url + "/healthz").status_code == 200  # the connection stays in the pool
        started = time.monotonic()
        served.stop()
        assert time.monotonic() - started < 5
    agent.store.close()


def test_an_unfinished_request_over_tls_is_answered_408_and_closed(tmp_path: Path) -> None:
    certificates = local_certificates(tmp_path)
    agent = Agent.open(
        Topology.load(I7), SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu")
    )
    served = Served(
        agent_app(agent, AGENT),
        limits=ServerLimits(request_timeout_s=0.5),
        tls=(certificates.cert, certificates.key),
    )
    try:
        raw = socket.create_connection(("127.0.0.1", served.port), timeout=5)
        with client_context(certificates.ca).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 408 ")
    finally:
        served.stop()
        agent.store.close()


def test_a_pinned_self_signed_certificate_is_trusted_as_its_own_ca(tmp_path: Path) -> None:
    """No CA at all: the server's own self-signed certificate is the CA file."""
    cert, key = self_signed(tmp_path)
    agent = Agent.open(
        Topology.load(I7), SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu")
    )
    served = Served(agent_app(agent, AGENT), tls=(cert, key))
    try:
        client = AgentClient(served.url, AGENT, verify=client_context(cert))
        assert client.get("absent") is None  # an answer (404) over verified TLS
        client.close()
        other = AgentClient(served.url, AGENT, verify=client_context(self_signed(tmp_path / "other")[0]))
        with pytest.raises(AgentUnreachableError, match="not trusted"):
            other.get("absent")
        other.close()
    finally:
        served.stop()
        agent.store.close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 (not a CA) and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    address = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(address, critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "self.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "self.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return directory / "self.pem", directory / "self.key"
