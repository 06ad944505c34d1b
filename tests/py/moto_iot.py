#!/usr/bin/env python3
"""A local AWS IoT emulator for mqttkit's tests: moto's server on 127.0.0.1.

Prints `PORT <n>` on stdout once it listens, then serves until killed
(SIGTERM/SIGINT). Point the AWS SDK at it with AWS_ENDPOINT_URL.

One deliberate change to moto (checked with moto 5.2.5): its
CreateCertificateFromCsr ignores the CSR's public key and returns a certificate
for a fresh random RSA key, so a client that keeps its own private key could
never use that certificate. Real AWS IoT signs the key in the CSR ("the private
key never leaves the device"). This harness replaces that one call so it signs
the CSR's own public key with a throw-away test CA, as AWS documents.
mqttkit itself checks that the returned certificate carries its key and fails
loudly otherwise, so unpatched moto makes `iot create-thing` fail (tests run
with MOTO_IOT_UNPATCHED=1 to show that).
"""

import datetime
import logging
import os
import signal
import sys
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from moto.iot.models import IoTBackend
from moto.server import ThreadedMotoServer

_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name(
    [
        x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "mqttkit tests"),
        x509.NameAttribute(x509.NameOID.COMMON_NAME, "moto stand-in for the AWS IoT CA"),
    ]
)


def _create_certificate_from_csr(self, csr, set_as_active):
    req = x509.load_pem_x509_csr(csr.encode("utf-8"))
    if not req.is_signature_valid:
        raise ValueError("CSR signature does not verify")
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(req.subject)
        .issuer_name(_CA_NAME)
        .public_key(req.public_key())  # the CSR's own key, as AWS does
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(_CA_KEY, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("utf-8")
    return self.register_certificate(
        pem, ca_certificate_pem=None, set_as_active=set_as_active, status="INACTIVE"
    )


def main():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request
    if os.environ.get("MOTO_IOT_UNPATCHED") != "1":
        IoTBackend.create_certificate_from_csr = _create_certificate_from_csr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    print(f"PORT {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    # Also stop when the test process that started us goes away (stdin closes).
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
