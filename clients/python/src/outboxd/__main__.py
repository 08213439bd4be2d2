"""python3 -m outboxd tail — follow outboxd's stream: one JSON event per
line on stdout, in seq order, each once, resumed after any disconnect;
what happens to the connection on stderr."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
from typing import List, Optional

USAGE = "python3 -m outboxd tail [--url URL] [--token JWT | --token-command CMD | --sub ID --roles R,…] [--since N --epoch E] [--topics a,b] [--count N] [--duration S]"


def _split(value: str) -> Optional[List[str]]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m outboxd", description="outboxd's Python client.")
    sub = p.add_subparsers(dest="command", metavar="tail")
    t = sub.add_parser("tail", help="follow the stream: one JSON event per line", usage=USAGE)
    t.add_argument("--url", default="ws://127.0.0.1:8002/ws/connect", help="outboxd's /ws/connect")
    t.add_argument("--token", default="", help="a JWT (static: tail exits when it expires or is revoked)")
    t.add_argument("--token-command", default="", help="a shell command printing a fresh JWT; run for every connection and before each token expires")
    t.add_argument("--sub", default="cli", help="user of a token minted from SECRET_KEY (when neither --token nor --token-command)")
    t.add_argument("--roles", default="", help="comma list of roles of a minted token")
    t.add_argument("--since", type=int, default=None, help="resume after this seq (default: live from the head)")
    t.add_argument("--epoch", default="", help="the history --since belongs to (outbox.epoch())")
    t.add_argument("--topics", default="", help="comma list of topics (default: every topic)")
    t.add_argument("--count", type=int, default=0, help="exit after this many events (0: no limit)")
    t.add_argument("--duration", type=float, default=0, help="exit after this many seconds (0: no limit)")
    return p


def _token_source(args: argparse.Namespace):
    if args.token and args.token_command:
        raise SystemExit("tail: give --token or --token-command, not both")
    if args.token:
        return args.token
    if args.token_command:
        def run() -> Optional[str]:
            out = subprocess.run(args.token_command, shell=True, capture_output=True, text=True)
            if out.returncode != 0:
                print("tail: --token-command %s exited %d: %s" % (shlex.quote(args.token_command), out.returncode,
                                                                 out.stderr.strip()), file=sys.stderr)
                return None
            return out.stdout.strip() or None
        return run
    from .tokens import DEVELOPMENT_SECRET, mint_token

    secret = os.environ.get("SECRET_KEY")
    if not secret:
        if os.environ.get("ENVIRONMENT", "development") != "development":
            raise SystemExit("tail: no --token, --token-command or SECRET_KEY to mint one with")
        secret = DEVELOPMENT_SECRET
    roles = _split(args.roles) or []
    mint_token(secret, args.sub, roles)  # a bad secret fails now, not at the first connection
    return lambda: mint_token(secret, args.sub, roles, ttl=3600)


async def _tail(args: argparse.Namespace) -> int:
    from .consumer import Consumer, Revoked, TokenRefused

    def state(s, info):
        if s == "reconnecting":
            print("tail: connection %s (%s); reconnecting in %.1f s with since=%s epoch=%s" % (
                info.get("code") or "failed", info.get("reason") or "", info.get("delay", 0),
                info.get("since"), info.get("epoch")), file=sys.stderr)
        elif s == "open":
            print("tail: connected as %s %s, after seq %s" % (info.get("user"), info.get("roles"), info.get("since")),
                  file=sys.stderr)

    def resync(oldest, reason):
        print("tail: resync_required (%s): events before seq %d cannot be replayed; reload your state" % (reason, oldest),
              file=sys.stderr)

    c = Consumer(args.url, _token_source(args), since=args.since, epoch=args.epoch or None,
                 topics=_split(args.topics), on_state=state, on_resync=resync)
    seen = 0

    async def follow() -> None:
        nonlocal seen
        async for ev in c:
            sys.stdout.write(json.dumps(ev, separators=(",", ":")) + "\n")
            sys.stdout.flush()
            seen += 1
            if args.count and seen >= args.count:
                return

    try:
        if args.duration > 0:
            await asyncio.wait_for(follow(), args.duration)
        else:
            await follow()
    except asyncio.TimeoutError:
        pass
    except (TokenRefused, Revoked) as exc:
        print("tail: %s" % exc, file=sys.stderr)
        return 1
    if not c.connected:
        print("tail: never connected to %s" % args.url, file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "tail":
        _parser().print_help(sys.stderr)
        return 2
    if args.count < 0 or args.duration < 0 or (args.since is not None and args.since < 0):
        print("tail: --count, --duration and --since must not be negative", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_tail(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
