"""When the frontends' TLS certificates expire, for Prometheus:
`foobar_lb_tls_cert_not_after_timestamp_seconds{frontend}` (as the blackbox exporter's
`probe_ssl_earliest_cert_expiry`), read from the certificate files at scrape time so that a
renewed file shows as soon as it is written, before the reload that serves it.

The standard library loads certificates but does not show their dates, so `not_after`
walks the few DER fields in front of the validity (RFC 5280 §4.1) itself.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from foobar.lb.balancer import Balancer

log = logging.getLogger("foobar.lb")

SEQUENCE, UTC_TIME, GENERALIZED_TIME, EXPLICIT_0 = 0x30, 0x17, 0x18, 0xA0


class CertificateError(ValueError):
    """The file holds no certificate this module can read."""


def _element(der: bytes, offset: int) -> tuple[int, int, int]:
    """The DER element at `offset`: (tag, where its content starts, where it ends)."""
    if offset + 2 > len(der):
        raise CertificateError("truncated DER")
    tag, length = der[offset], der[offset + 1]
    start = offset + 2
    if length & 0x80:  # long form: the next (length & 0x7F) bytes hold the length
        count = length & 0x7F
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    if start + length > len(der):
        raise CertificateError("truncated DER")
    return tag, start, start + length


def _time(tag: int, text: str) -> float:
    # RFC 5280 §4.1.2.5: UTCTime YYMMDDHHMMSSZ (years 1950-2049), else GeneralizedTime
    if tag == UTC_TIME:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != GENERALIZED_TIME:
        raise CertificateError(f"unexpected tag {tag:#x} for a time")
    moment = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def not_after(der: bytes) -> float:
    """The Unix time at which the DER certificate `der` stops being valid."""
    tag, start, _ = _element(der, 0)  # Certificate
    if tag != SEQUENCE:
        raise CertificateError("not a certificate")
    tag, offset, _ = _element(der, start)  # TBSCertificate
    if tag != SEQUENCE:
        raise CertificateError("not a certificate")
    if der[offset] == EXPLICIT_0:  # [0] version, absent in v1 certificates
        offset = _element(der, offset)[2]
    for _field in ("serialNumber", "signature", "issuer"):
        offset = _element(der, offset)[2]
    tag, validity, _ = _element(der, offset)
    if tag != SEQUENCE:
        raise CertificateError("no validity")
    after = _element(der, validity)[2]  # skip notBefore
    tag, start, end = _element(der, after)
    return _time(tag, der[start:end].decode("ascii"))


def file_not_after(path: Path) -> float:
    """notAfter of the first certificate in a PEM file (the server's own, before its chain)."""
    text = path.read_text(encoding="ascii", errors="replace")
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        raise CertificateError("no PEM certificate")
    pem = text[begin : end + len("-----END CERTIFICATE-----")]
    try:
        return not_after(ssl.PEM_cert_to_DER_cert(pem))
    except (ValueError, IndexError) as exc:
        raise CertificateError(str(exc)) from exc


class CertificateCollector(Collector):
    """One sample per TLS frontend; a file that cannot be read is logged and left out
    (the frontend keeps serving the certificate it loaded)."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "foobar_lb_tls_cert_not_after_timestamp_seconds",
            "when the frontend's certificate expires (Unix time)",
            labels=["frontend"],
        )
        for frontend in self.balancer.settings.frontends:
            if frontend.tls_cert is None:
                continue
            try:
                family.add_metric([frontend.name], file_not_after(frontend.tls_cert))
            except (OSError, CertificateError) as exc:
                log.warning(
                    "event=certificate_unreadable frontend=%s path=%s reason=%r",
                    frontend.name,
                    frontend.tls_cert,
                    str(exc),
                )
        yield family
