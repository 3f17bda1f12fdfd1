"""Parses a received message with Python's MIME parser and verifies its DKIM signature
against a public key given here (no DNS). Prints one JSON object: the headers, each part's
type and text, and whether DKIM verified."""

import base64
import email
import email.policy
import json
import sys

import dkim


def main():
    path, pub_pem, selector, domain = sys.argv[1:5]
    raw = open(path, "rb").read()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    pub = "".join(l for l in open(pub_pem).read().splitlines() if "-----" not in l)
    record = ("v=DKIM1; k=rsa; p=" + pub).encode()

    def dns(name, timeout=5):
        want = ("%s._domainkey.%s." % (selector, domain)).encode()
        return record if name in (want, want.rstrip(b".")) else None

    verified = dkim.verify(raw, dnsfunc=dns)
    signature = msg.get("DKIM-Signature", "")
    parts = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        parts.append({"type": part.get_content_type(), "content": part.get_content()})
    headers = {k: str(v) for k, v in msg.items()}
    print(json.dumps({
        "headers": headers,
        "content_type": msg.get_content_type(),
        "parts": parts,
        "dkim": bool(verified),
        "dkim_signature": signature,
    }))


if __name__ == "__main__":
    main()
