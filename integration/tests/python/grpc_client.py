#!/usr/bin/env python3
"""A client of the v1 API written outside Rust: generates Python stubs from the .proto files with
grpc_tools.protoc, connects over mutual TLS with the dev portal certificate, creates a ticket
with Japanese names, redeems it for Android and opens the bundle with pyca/cryptography.

Usage: grpc_client.py TARGET DEV_DIR PROTO_DIR
  TARGET     host:port of the daemon's gRPC listener (e.g. 127.0.0.1:50051)
  DEV_DIR    the daemon's DATA_DIR/dev (service-ca.crt, portal.crt, portal.key)
  PROTO_DIR  root of the .proto files (pki/ca/v1/*.proto)

Prints one JSON object on stdout: {"ok": true, "number", "password", "serial", "file_name",
"media_type", "subject_o", "subject_cn"}. The password is printed so the calling test can check
that the daemon never logged it. Any failure raises (non-zero exit, traceback on stderr).
"""

import glob
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc
import grpc_tools
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

FACILITY = "みよし訪問看護ステーション"
FAMILY, GIVEN = "山田", "花子"


def generate_stubs(proto_dir, out_dir):
    protos = sorted(glob.glob(os.path.join(proto_dir, "pki", "ca", "v1", "*.proto")))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}/pki/ca/v1")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed")
    sys.path.insert(0, out_dir)


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    target, dev_dir, proto_dir = sys.argv[1:]
    with tempfile.TemporaryDirectory() as out_dir:
        generate_stubs(proto_dir, out_dir)
        common = importlib.import_module("pki.ca.v1.common_pb2")
        enrollment = importlib.import_module("pki.ca.v1.enrollment_pb2")
        enrollment_grpc = importlib.import_module("pki.ca.v1.enrollment_pb2_grpc")

    def read(name):
        with open(os.path.join(dev_dir, name), "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("service-ca.crt"),
        private_key=read("portal.key"),
        certificate_chain=read("portal.crt"),
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(target, creds, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = enrollment_grpc.EnrollmentStub(channel)
        created = stub.CreateTicket(
            enrollment.CreateTicketRequest(
                facility=common.Facility(
                    id="F-PY", name=FACILITY, prefecture="愛知県", city="みよし市", kind="訪問看護"
                ),
                person=common.Person(
                    id="P-PY",
                    family_name=FAMILY,
                    given_name=GIVEN,
                    family_name_kana="ヤマダ",
                    given_name_kana="ハナコ",
                    job="看護師",
                    email="hanako@example.jp",
                ),
                device=common.Device(id="D-PY", os=common.TARGET_OS_ANDROID, remark="個人端末"),
                approved_by="事務局",
            ),
            timeout=60,
        )
        if len(created.number) != 8 or not created.number.isdigit():
            raise SystemExit(f"ticket number is not 8 digits: {created.number!r}")
        if len(created.password) != 8 or not created.password.isdigit():
            raise SystemExit("ticket password is not 8 digits")
        if created.ticket.state != common.TICKET_STATE_ACTIVE:
            raise SystemExit(f"new ticket state {created.ticket.state}, expected ACTIVE")
        redeemed = stub.RedeemTicket(
            enrollment.RedeemTicketRequest(
                number=created.number,
                password=created.password,
                os=common.TARGET_OS_ANDROID,
            ),
            timeout=120,
        )

    bundle = pkcs12.load_pkcs12(redeemed.pkcs12, created.password.encode())
    if bundle.key is None or bundle.cert is None:
        raise SystemExit("bundle has no key or no certificate")
    leaf = bundle.cert.certificate
    if leaf.public_bytes(serialization.Encoding.DER) != redeemed.certificate_der:
        raise SystemExit("bundle leaf differs from certificate_der")
    # Issue #12 item 7: the bundle carries the issuing CA, not the root.
    if len(bundle.additional_certs) != 1:
        raise SystemExit(f"chain in bundle has {len(bundle.additional_certs)} certificates, expected 1")
    extra = bundle.additional_certs[0].certificate.public_bytes(serialization.Encoding.DER)
    if extra != redeemed.chain_der[0]:
        raise SystemExit("the bundle's CA certificate is not the issuer of chain_der")
    org = leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    if org.encode("utf-8") != FACILITY.encode("utf-8"):
        raise SystemExit(f"subject O {org!r} != {FACILITY!r}")
    if cn.encode("utf-8") != f"{FAMILY} {GIVEN}".encode("utf-8"):
        raise SystemExit(f"subject CN {cn!r} != {FAMILY} {GIVEN!r}")
    if not redeemed.file_name.endswith(".p12") or redeemed.media_type != "application/x-pkcs12":
        raise SystemExit(f"android file {redeemed.file_name!r} {redeemed.media_type!r}")
    if redeemed.mobileconfig:
        raise SystemExit("android bundle came with a mobileconfig")
    json.dump(
        {
            "ok": True,
            "number": created.number,
            "password": created.password,
            "serial": redeemed.serial,
            "file_name": redeemed.file_name,
            "media_type": redeemed.media_type,
            "subject_o": org,
            "subject_cn": cn,
        },
        sys.stdout,
        ensure_ascii=False,
    )


if __name__ == "__main__":
    main()
