#!/usr/bin/env python3
"""Opens a device bundle with pyca/cryptography (and its .mobileconfig with plistlib) and prints
what it found as one JSON object on stdout, for the Rust test to compare against the request.

Usage: check_bundle.py BUNDLE.p12 PASSWORD_FILE [MOBILECONFIG]

The password is read from a file, never taken from the command line. Any failure to open or
parse raises, so the process exits non-zero with a traceback on stderr.

Output (text values are hex of their UTF-8 bytes, so the comparison is byte for byte):
  leaf_der, key_type, key_curve, key_matches_leaf, subject {C, O, OU, CN},
  friendly_name (hex or null), additional [{der, friendly_name, self_signed}],
  mobileconfig (when given): {payload_type, payloads [{type, keys}],
                              pkcs12_leaf_der, pkcs12_additional [der], pkcs12_opened,
                              issuer_der (the com.apple.security.pkcs1 payload, or null),
                              root_der (the com.apple.security.root payload, or null)}
"""

import json
import plistlib
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID


def hexs(s):
    return None if s is None else s.encode("utf-8").hex()


def der_hex(cert):
    return cert.public_bytes(serialization.Encoding.DER).hex()


def subject_of(cert):
    out = {}
    for key, oid in (
        ("C", NameOID.COUNTRY_NAME),
        ("O", NameOID.ORGANIZATION_NAME),
        ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME),
        ("CN", NameOID.COMMON_NAME),
    ):
        attrs = cert.subject.get_attributes_for_oid(oid)
        out[key] = [hexs(a.value) for a in attrs]
    return out


def open_pfx(data, password):
    bundle = pkcs12.load_pkcs12(data, password)
    if bundle.key is None or bundle.cert is None:
        raise SystemExit("bundle has no key or no leaf certificate")
    key = bundle.key
    leaf = bundle.cert.certificate
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    matches = key.public_key().public_bytes(*spki) == leaf.public_key().public_bytes(*spki)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key_type, curve = "EC", key.curve.name
    elif isinstance(key, rsa.RSAPrivateKey):
        key_type, curve = "RSA", None
    else:
        key_type, curve = type(key).__name__, None
    fn = bundle.cert.friendly_name
    return bundle, {
        "leaf_der": der_hex(leaf),
        "key_type": key_type,
        "key_curve": curve,
        "key_matches_leaf": matches,
        "subject": subject_of(leaf),
        "friendly_name": None if fn is None else fn.hex(),
        "additional": [
            {
                "der": der_hex(c.certificate),
                "friendly_name": None if c.friendly_name is None else c.friendly_name.hex(),
                # A root (self-signed) in a bundle becomes a trust anchor on the device.
                "self_signed": c.certificate.subject == c.certificate.issuer,
            }
            for c in bundle.additional_certs
        ],
    }


def load_cert(raw):
    if raw.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(raw)
    return x509.load_der_x509_certificate(raw)


def check_mobileconfig(data, password):
    plist = plistlib.loads(data)
    out = {
        "payload_type": plist.get("PayloadType"),
        "payloads": [],
        "issuer_der": None,
        "root_der": None,
    }
    for p in plist.get("PayloadContent", []):
        out["payloads"].append({"type": p.get("PayloadType"), "keys": sorted(p.keys())})
        if p.get("PayloadType") == "com.apple.security.pkcs12":
            _, facts = open_pfx(p["PayloadContent"], password)
            out["pkcs12_leaf_der"] = facts["leaf_der"]
            out["pkcs12_additional"] = [c["der"] for c in facts["additional"]]
            out["pkcs12_opened"] = True
        elif p.get("PayloadType") == "com.apple.security.pkcs1":
            out["issuer_der"] = der_hex(load_cert(p["PayloadContent"]))
        elif p.get("PayloadType") == "com.apple.security.root":
            out["root_der"] = der_hex(load_cert(p["PayloadContent"]))
    return out


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    with open(sys.argv[2], "rb") as f:
        password = f.read().strip()
    with open(sys.argv[1], "rb") as f:
        _, facts = open_pfx(f.read(), password)
    if len(sys.argv) == 4:
        with open(sys.argv[3], "rb") as f:
            facts["mobileconfig"] = check_mobileconfig(f.read(), password)
    json.dump(facts, sys.stdout)


if __name__ == "__main__":
    main()
