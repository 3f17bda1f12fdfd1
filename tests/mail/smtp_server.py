"""A real SMTP server for pegabridge's tests (aiosmtpd), on 127.0.0.1.

Every accepted message is written to DIR as NNNN.eml (the exact bytes received, with the
envelope in NNNN.json). It can be told to refuse, as relays do:
  --fail-first N   answer the first N messages `451 4.3.0 try again later`
  --reject ADDR    answer `550 5.1.1 no such user` for this recipient (repeatable)
  --discard        keep nothing: print `accepted N` after every 100 messages (a sink for
                   benchmarks)
  --cert F --key F TLS with this certificate: STARTTLS (required), or with --implicit-tls
                   TLS from the first byte
  --client-ca F    require a client certificate issued by this CA
  --auth USER:PASS require AUTH with these credentials (only over TLS)
  --stuck ADDR     never answer the data of a message to this recipient (a stuck session)
  --pipelining     announce PIPELINING (RFC 2920) and write in each message's NNNN.json
                   whether its RCPT and DATA had already arrived when its MAIL was answered
It prints `ready PORT` once it listens, then serves until killed.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Handler:
    def __init__(self, out, fail_first, reject, discard=False, stuck=(), pipelining=False):
        self.pipelining = pipelining
        self.stuck = {s.lower() for s in stuck}
        self.discard = discard
        self.out = out
        self.fail_first = fail_first
        self.reject = {r.lower() for r in reject}
        self.count = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            # Before the last line ("250 HELP").
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        # Pipelined, the client's RCPT and DATA came with its MAIL: they wait in the
        # server's read buffer while MAIL is answered.
        envelope.pipelined = len(getattr(server._reader, "_buffer", b"")) > 0
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return "550 5.1.1 <%s>: no such user here" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if any(r.lower() in self.stuck for r in envelope.rcpt_tos):
            await asyncio.Event().wait()
        if self.fail_first > 0:
            self.fail_first -= 1
            return "451 4.3.0 try again later"
        self.count += 1
        if self.discard:
            if self.count % 100 == 0:
                print("accepted %d" % self.count, flush=True)
            return "250 2.0.0 queued as %d" % self.count
        name = os.path.join(self.out, "%04d" % self.count)
        with open(name + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(name + ".json", "w") as f:
            json.dump(
                {
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "pipelined": getattr(envelope, "pipelined", False),
                },
                f,
            )
        os.rename(name + ".tmp", name + ".eml")
        return "250 2.0.0 queued as %04d" % self.count


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--reject", action="append", default=[])
    p.add_argument("--discard", action="store_true")
    p.add_argument("--stuck", action="append", default=[])
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--client-ca")
    p.add_argument("--auth")
    p.add_argument("--pipelining", action="store_true")
    args = p.parse_args()
    handler = Handler(
        args.dir, args.fail_first, args.reject, args.discard, args.stuck, args.pipelining
    )
    options = {}
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            context.load_verify_locations(args.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        if args.implicit_tls:
            options["ssl_context"] = context
        else:
            options["server_kwargs"] = {"tls_context": context, "require_starttls": True}
    if args.auth:
        user, password = args.auth.encode().split(b":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login == user and auth_data.password == password
            return AuthResult(success=ok, handled=False)

        server_kwargs = options.setdefault("server_kwargs", {})
        server_kwargs["authenticator"] = authenticator
        server_kwargs["auth_required"] = True
        # aiosmtpd 1.4 knows only STARTTLS's encryption: with implicit TLS every byte is
        # encrypted already, so it must not ask for more.
        server_kwargs["auth_require_tls"] = not args.implicit_tls
    controller = Controller(handler, hostname="127.0.0.1", port=args.port, **options)
    controller.start()
    print("ready %d" % args.port, flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
