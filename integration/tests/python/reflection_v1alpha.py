#!/usr/bin/env python3
"""A server reflection client that speaks only grpc.reflection.v1alpha (as Python's
grpcio-reflection, older grpcurl and GUI clients do): lists the services and resolves the
CreateTicket method from the descriptors the server sends, over mutual TLS.

Usage: reflection_v1alpha.py TARGET DEV_DIR
Prints one JSON object: {"services": [...], "create_ticket_input": "...", "fields": [...]}.
Any failure raises (non-zero exit).
"""

import json
import os
import sys

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    target, dev_dir = sys.argv[1:]

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
        db = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(db.get_services())
        pool = descriptor_pool.DescriptorPool(db)
        method = pool.FindMethodByName("pki.ca.v1.Enrollment.CreateTicket")
        fields = [f.name for f in method.input_type.fields]
        print(
            json.dumps(
                {
                    "services": services,
                    "create_ticket_input": method.input_type.full_name,
                    "fields": fields,
                }
            )
        )


if __name__ == "__main__":
    main()
