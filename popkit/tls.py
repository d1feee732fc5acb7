"""A kit's own certificate authority and its broker's certificate, made at provisioning.

Each kit gets its own CA (not a shared one): a stolen scanner's copy of the CA certificate lets it
verify its broker, nothing more, and a CA key leaked from one kit's folder vouches for no other
kit's broker. The CA key never leaves the provisioning folder; devices get the CA *certificate*
in their config and refuse any broker whose certificate it did not sign.

ECDSA P-256: what the ESP32's mbedTLS verifies quickly and the certificates stay small (a device
config holds the CA as PEM text, ~600 bytes).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from plumbing.files import write_atomic

CA_YEARS = 10  # the CA outlives any tour; a new one means reflashing every device
SERVER_DAYS = 825  # the longest server certificate lifetime clients commonly accept
RENEW_BEFORE_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate (public: every client gets it)
    cert: Path  # the broker's certificate, signed by the CA
    key: Path  # the broker's private key (0600)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ca(folder: Path, kit: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = folder / "ca.crt", folder / "ca.key"
    if cert_path.exists() and key_path.exists():
        return (x509.load_pem_x509_certificate(cert_path.read_bytes()),
                serialization.load_pem_private_key(key_path.read_bytes(), None))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PopKit"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"PopKit kit CA {kit}")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), private=True)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert, key


def _san(hosts: list[str]):
    from cryptography import x509

    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _server_ok(path: Path, ca, hosts: list[str]) -> bool:
    """The broker certificate on disk names every host, was signed by this CA and is not near expiry."""
    from cryptography import x509

    if not path.exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return (cert.issuer == ca.subject and set(san) == set(_san(hosts))
            and cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_BEFORE_DAYS))


def ensure_broker_tls(folder: Path, kit: str, hosts: list[str]) -> TlsFiles:
    """The kit's CA (made once) and a broker certificate for ``hosts`` (made again when the hosts
    change or it nears expiry; the CA, and so every device's copy of it, stays)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    ca, ca_key = _ca(folder, kit)
    hosts = sorted(set(hosts) | {"localhost", "127.0.0.1"})  # the agent and the kit's own tools are local
    files = TlsFiles(folder / "ca.crt", folder / "broker.crt", folder / "broker.key")
    if _server_ok(files.cert, ca, hosts) and files.key.exists():
        return files
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"popkit broker {kit}")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_atomic(files.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), private=True)
    write_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return files
