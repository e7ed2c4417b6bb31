"""The certificate expiry the balancer exports: the dates read from real certificates
(openssl's and the cryptography package's, through trustme), and refusals of what is not one."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
import trustme

from foobar.lb.certs import CertificateError, file_not_after


@pytest.mark.parametrize(
    ("not_after", "expected"),
    [
        # UTCTime up to 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5)
        (datetime.datetime(2031, 5, 17, 8, 30, tzinfo=datetime.UTC), 1936773000.0),
        (datetime.datetime(2061, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), 2871860645.0),
    ],
)
def test_trustme_certificate_dates(
    tmp_path: Path, not_after: datetime.datetime, expected: float
) -> None:
    authority = trustme.CA()
    leaf = authority.issue_cert("www.foobar.com", not_after=not_after)
    path = tmp_path / "cert.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(path))  # key first, then the chain
    assert file_not_after(path) == expected == not_after.timestamp()


def test_openssl_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "10"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=www.foobar.com"),
        ],
        check=True,
        capture_output=True,
    )
    end = subprocess.run(
        ["openssl", "x509", "-noout", "-enddate", "-in", str(cert)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    expected = datetime.datetime.strptime(end, "notAfter=%b %d %H:%M:%S %Y GMT")
    assert file_not_after(cert) == expected.replace(tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize(
    "text",
    [
        "not a certificate\n",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
    ],
)
def test_not_a_certificate(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cert.pem"
    path.write_text(text)
    with pytest.raises(CertificateError):
        file_not_after(path)
