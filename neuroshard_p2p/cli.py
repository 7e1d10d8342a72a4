"""`neuroshard-node`: run a market node and talk to a running one.

    neuroshard-node run                      start a node (creates ~/.neuroshard on first run)
    neuroshard-node init                     create the data dir (key, API token, config.toml)
    neuroshard-node id                       peer id and the multiaddrs others bootstrap from
    neuroshard-node peers                    connected peers
    neuroshard-node health                   can it do its work now? (exit status 1 if not)
    neuroshard-node market                   the market as the node sees it (price, supply, demand)
    neuroshard-node register --capacity N    offer N tokens/s of inference capacity
    neuroshard-node withdraw                 stop offering capacity
    neuroshard-node submit --tokens N --max-price P   submit a request (its price is locked now)
    neuroshard-node status REQUEST_ID        a request's state, provider, cost and output
    neuroshard-node token                    print the API token (--rotate for a new one)
    neuroshard-node ledger [verify]          what this node settled; `verify` checks the invariant
    neuroshard-node charter new|show|verify  make, print or check a network's charter
    neuroshard-node member issue|revoke|show  admit or revoke members of a members network

Client commands find the running node through `<data-dir>/api` (written by `run`) or `--api`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from typing import Any, Sequence

from neuroshard_p2p import __version__
from neuroshard_p2p.charter import DEFAULT_MODEL
from neuroshard_p2p.config import ConfigError
from neuroshard_p2p.node.settings import (
    BACKEND_KINDS,
    DEFAULT_API,
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
    NodeSettings,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure to report as one line on stderr (exit status 1)."""


class UsageError(Exception):
    """Flags that cannot work together: reported with the command's usage (exit status 2, as
    argparse does for a malformed command line)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


# ---------------------------------------------------------------------------------------------
# argument parsing


def finite_float(text: str) -> float:
    """A number flag: NaN and infinities are refused as usage errors (JSON cannot carry them,
    and no price, instant or timeout is infinite)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroshard-node",
        description="A peer-to-peer market node that prices and routes AI-inference capacity.",
        epilog="Start with `neuroshard-node run`; it creates what it needs on first run. "
               "Every setting can also be written in <data-dir>/config.toml ([node] and [market] "
               "tables); flags override the file.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR",
                       help=f"node data directory: key, API token, config.toml "
                            f"(default {DEFAULT_DATA_DIR})")

    def client(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
        data_dir(p)
        p.add_argument("--api", metavar="URL",
                       help="the running node's API, e.g. http://127.0.0.1:8000 (default: the "
                            "URL `run` wrote to <data-dir>/api when it started)")
        if json_flag:
            p.add_argument("--json", action="store_true", help="print the raw JSON answer")

    p = sub.add_parser("init", help="create the data dir: key (mode 0600), API token, config.toml",
                       description="Create the data directory with a new secp256k1 key (the "
                                   "node's peer id and market signing key), an API token and a "
                                   "config.toml of defaults. Existing files are kept.")
    data_dir(p)

    p = sub.add_parser("run", help="run a node (creates the data dir on first run)",
                       description="Run a market node until SIGINT/SIGTERM (or SIGHUP, the "
                                   "terminal going away, unless run under nohup); a clean stop "
                                   "publishes a withdrawal so peers stop counting this node at "
                                   "once. Prints the multiaddr others bootstrap from and the "
                                   "dashboard URL. Flags override <data-dir>/config.toml.")
    data_dir(p)
    p.add_argument("--listen", action="append", metavar="MULTIADDR",
                   help=f"libp2p listen address, repeatable (default {DEFAULT_LISTEN[0]})")
    p.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                   help="peer to join through, /ip4/HOST/tcp/PORT/p2p/PEER_ID; repeatable. "
                        "Unreachable ones are retried with back-off.")
    p.add_argument("--network", metavar="NAME",
                   help="a built-in network to join: testnet (the default) or simnet (no "
                        "identity work; for local tests). Nodes of different networks never mix")
    p.add_argument("--charter", metavar="FILE",
                   help="join the network this charter file describes (`neuroshard-node charter "
                        "new` makes one); instead of --network")
    p.add_argument("--api", metavar="HOST:PORT",
                   help=f"HTTP API and dashboard address (default {DEFAULT_API}; port 0 picks a "
                        f"free one; 'off' runs none)")
    p.add_argument("--capacity", type=int, metavar="TOKENS_PER_S",
                   help="inference capacity to offer, tokens per second (default 0: none)")
    p.add_argument("--min-price", type=finite_float, metavar="NEURO",
                   help="lowest price to serve at, NEURO per 1M tokens (default 0)")
    p.add_argument("--backend", choices=BACKEND_KINDS,
                   help="what serves the jobs this node accepts: 'synthetic' produces the "
                        "requested tokens at the offered rate; 'openai' sends them to an "
                        "OpenAI-compatible server (llama.cpp, vLLM, Ollama), which needs "
                        "--backend-url and --backend-model (default synthetic)")
    p.add_argument("--backend-url", metavar="URL",
                   help="the OpenAI-compatible server, http(s)://host:port, with or without /v1 "
                        "(e.g. http://127.0.0.1:8080, http://127.0.0.1:11434/v1)")
    p.add_argument("--backend-model", metavar="NAME",
                   help="the model name the server is asked for (e.g. qwen2.5-0.5b-instruct)")
    p.add_argument("--backend-timeout", type=finite_float, metavar="SECONDS",
                   help="longest wait for the server's answer to one job (default 60; a job's "
                        "own deadline may cut it shorter)")
    p.add_argument("--openai-max-price", type=finite_float, metavar="NEURO",
                   help="price cap of a /v1 request that names none, NEURO per 1M tokens "
                        "(default 0: the market's max_price)")
    p.add_argument("--openai-max-tokens", type=int, metavar="N",
                   help="tokens a /v1 request without max_tokens buys (default 1024)")
    p.add_argument("--api-cors-origin", action="append", metavar="ORIGIN",
                   help="a web origin whose pages may call /v1 from a browser, e.g. "
                        "http://localhost:3000 ('*': any); may be given more than once")
    p.add_argument("--no-mdns", dest="mdns", action="store_const", const=False,
                   help="do not look for (or announce to) nodes of the network on the LAN by "
                        "mDNS (on by default)")
    p.add_argument("--relay-service", choices=("auto", "on", "off"),
                   help="relay circuits for nodes behind NAT: 'auto' (the default) once this "
                        "node is found publicly reachable, 'on', 'off'")
    p.add_argument("--no-upnp", dest="upnp", action="store_const", const=False,
                   help="do not ask the router to forward the listen port by UPnP")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="log detail (default info)")
    p.set_defaults(command_parser=p)

    p = sub.add_parser("id", help="peer id and the multiaddrs to share",
                       description="Print this node's peer id and the full multiaddrs others can "
                                   "--bootstrap from (from the running node; offline, the "
                                   "configured listen addresses).")
    client(p)

    p = sub.add_parser("peers", help="connected peers")
    client(p)

    p = sub.add_parser("health", help="whether the node can do its work; exit status 1 if not",
                       description="Ask the running node whether it can do its work now: it "
                                   "prints `ok`, or each failed check and why (no peer, a wrong "
                                   "clock, a backend that refuses connections, earnings the "
                                   "ledger could not write, an unreadable token file, stopping),"
                                   " and exits with status 1. For scripts and monitors.")
    client(p)

    p = sub.add_parser("market", help="current market stats as this node sees them",
                       description="Price, supply, demand and utilization as the running node "
                                   "sees them, now or at a given instant.")
    client(p)
    p.add_argument("--at", type=finite_float, metavar="UNIX_SECONDS",
                   help="evaluate at this instant instead of now (every node holding the same "
                        "announcements gives the same answer)")

    p = sub.add_parser("register", help="offer inference capacity",
                       description="Offer capacity on the market (announced within a second).")
    client(p)
    p.add_argument("--capacity", type=int, required=True, metavar="TOKENS_PER_S",
                   help="tokens per second to offer")
    p.add_argument("--min-price", type=finite_float, default=0.0, metavar="NEURO",
                   help="lowest price to serve at, NEURO per 1M tokens (default 0)")

    p = sub.add_parser("withdraw", help="stop offering capacity")
    client(p)

    p = sub.add_parser("submit", help="submit an inference request at the node",
                       description="Submit a request at the running node (its gateway): it "
                                   "locks the current market price at once and is routed to "
                                   "the cheapest provider at or below that price. While it "
                                   "waits, its tokens count in the node's demand "
                                   "announcement, which moves the price. Prints the request "
                                   "id, the locked price and its state.")
    client(p)
    p.add_argument("--tokens", type=int, required=True, help="tokens requested")
    p.add_argument("--max-price", type=finite_float, required=True, metavar="NEURO",
                   help="highest price to pay, NEURO per 1M tokens")
    p.add_argument("--tier", default="standard", choices=("economy", "standard", "premium"),
                   help="service tier carried in the job (default standard)")
    p.add_argument("--prompt", default="", help="the prompt text")
    p.add_argument("--user", help="user name (default: the node's peer id)")

    p = sub.add_parser("chat", help="stream a completion for a prompt through the market",
                       description="Send PROMPT to the running node's OpenAI-compatible "
                                   "endpoint (/v1/chat/completions, stream=true) and print the "
                                   "tokens as the provider generates them, then what the market "
                                   "charged (to stderr). Ctrl-C cancels: the provider stops and "
                                   "you pay for the tokens served.")
    client(p)
    p.add_argument("prompt", metavar="PROMPT", help="what to ask")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="tokens to buy (default: the node's openai_default_max_tokens)")
    p.add_argument("--max-price", type=finite_float, default=None, metavar="NEURO",
                   help="highest price to pay, NEURO per 1M tokens (default: the node's "
                        "openai_max_price)")
    p.add_argument("--system", default=None, help="a system message before the prompt")
    p.add_argument("--temperature", type=finite_float, default=None,
                   help="sampling temperature, 0..2 (sent to the provider's backend)")
    p.add_argument("--top-p", type=finite_float, default=None, help="nucleus sampling, 0..1")
    p.add_argument("--seed", type=int, default=None, help="the backend's sampling seed")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end the answer at TEXT (up to 4 times)")

    p = sub.add_parser("status", help="a submitted request's state, provider, cost and output",
                       description="Show a request submitted at this node: its state (pending, "
                                   "claimed, completed, failed, expired) with the reason, the "
                                   "locked price, the provider, the tokens served, the cost and, "
                                   "once completed, the output.")
    client(p)
    p.add_argument("request_id", metavar="REQUEST_ID", help="the id `submit` printed (req-…)")

    p = sub.add_parser("token", help="print the API token",
                       description="Print the bearer token POSTs to the HTTP API need.")
    data_dir(p)
    p.add_argument("--rotate", action="store_true",
                   help="replace it with a new random token (takes effect at once)")
    p = sub.add_parser("ledger", help="this node's settlements; `ledger verify` checks them",
                       description="Show the totals, refusals and recent settlements in "
                                   "<data-dir>/ledger.sqlite3 (readable while the node runs). "
                                   "`ledger verify` checks that paid == earned + burned and that "
                                   "every row traces to a valid signed receipt; exit status 1 "
                                   "if it does not.")
    data_dir(p)
    p.add_argument("action", nargs="?", choices=("show", "verify"), default="show",
                   help="show (default) or verify")
    p.add_argument("--recent", type=int, default=10, metavar="N",
                   help="how many recent settlements to list (default 10)")
    p.add_argument("--json", action="store_true", help="print the raw JSON")

    p = sub.add_parser("charter", help="make, print or check a network charter",
                       description="A charter is one file per network: every value that enters "
                                   "validity, expiry or price, the model served and who may take "
                                   "part. Its hash names the network (<name>-<hash16>), so nodes "
                                   "of different charters never exchange a market message.")
    charter = p.add_subparsers(dest="charter_command", metavar="ACTION",
                               help="new, show or verify")
    charter.required = True
    c = charter.add_parser("new", help="write a new charter (testnet's values unless --set)",
                           description="Write a new network's charter: testnet's parameters "
                                       "with the name, model, admission and values given. Print "
                                       "it, or write it with -o.")
    c.add_argument("--name", default="devnet",
                   help="network name: 1-32 letters, digits, '-', '_' or '.' (default devnet)")
    c.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"the model the network serves (default {DEFAULT_MODEL})")
    c.add_argument("--description", default="", help="one line for people (not hashed)")
    c.add_argument("--members", action="store_true",
                   help="a members network: only keys an --authority admitted take part "
                        "(identity_work_bits 0 unless --set)")
    c.add_argument("--authority", action="append", default=[], metavar="HEX",
                   help="a charter authority's 33-byte compressed public key in hex; "
                        "repeatable; needs --members")
    c.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR",
                   help="a bootnode, /ip4/HOST/tcp/PORT/p2p/PEER_ID; repeatable (not hashed)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="params",
                   help="a [params] value, e.g. window_ticks=16 or identity_work_bits=0; "
                        "repeatable")
    c.add_argument("-o", "--output", metavar="FILE",
                   help="write the charter to FILE (refused when it exists) instead of printing")
    c.set_defaults(command_parser=c)
    c = charter.add_parser("show", help="print a charter with its network id",
                           description="Print a charter as TOML, its network id in the first "
                                       "line: a file, a built-in network (testnet, simnet), or "
                                       "the one `run` would join with this data dir.")
    c.add_argument("source", nargs="?", metavar="FILE|BUILTIN",
                   help="a charter file or a built-in network's name (default: the data dir's)")
    data_dir(c)
    c.add_argument("--json", action="store_true",
                   help="print name, network id, hash, model, admission and params as JSON")
    c = charter.add_parser("verify", help="check a charter file and its network id",
                           description="Parse a charter file, recompute its hash and compare "
                                       "the network id with --id and with the one its first "
                                       "line states; exit status 1 when the file is not a valid "
                                       "charter or an id does not match.")
    c.add_argument("file", metavar="FILE", help="the charter file")
    c.add_argument("--id", metavar="NETWORK_ID", dest="network_id",
                   help="the network id the file must have (<name>-<hash16>)")

    p = sub.add_parser("member", help="admit or revoke members of a members network",
                       description="In a members network (a charter with policy \"members\") "
                                   "only keys holding a credential of one of the charter's "
                                   "authorities count. `issue` and `revoke` sign with the key of "
                                   "--data-dir (an authority's); `show` prints a credential.")
    member = p.add_subparsers(dest="member_command", metavar="ACTION", help="issue, revoke or show",
                              parser_class=argparse.ArgumentParser)
    member.required = True
    m = member.add_parser("issue", help="sign a member's credential",
                          description="Sign a credential admitting MEMBER (a peer id or a hex "
                                      "public key) to the network of --charter, with the "
                                      "authority key of --data-dir. Caps default to the "
                                      "charter's per-signer caps.")
    data_dir(m)
    m.add_argument("member", metavar="MEMBER", help="the member's peer id or hex public key")
    m.add_argument("--charter", required=True, metavar="FILE", help="the network's charter file")
    m.add_argument("--roles", default="provider,gateway",
                   help="provider, gateway or provider,gateway (default both)")
    m.add_argument("--max-capacity", type=int, metavar="TOK_PER_S",
                   help="most tokens/s the member's capacity counts")
    m.add_argument("--max-demand", type=int, metavar="TOKENS",
                   help="most waiting tokens the member's demand counts")
    m.add_argument("--max-requests", type=int, metavar="N",
                   help="most waiting requests the member's demand counts")
    m.add_argument("--days", type=finite_float, default=365.0,
                   help="valid for this many days (default 365)")
    m.set_defaults(command_parser=m)
    where = m.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="FILE",
                       help="write the credential (hex) to FILE for the member")
    where.add_argument("--install", metavar="MEMBER_DATA_DIR",
                       help="put it straight into the member's data dir (<dir>/credential)")
    m = member.add_parser("revoke", help="sign a revocation list that ends a member",
                          description="Add MEMBER to this authority's revocation list for the "
                                      "network of --charter (kept in <data-dir>/revocations-<id>, "
                                      "so every list names everyone still revoked) and sign it. "
                                      "--publish hands it to the running node, which gossips it.")
    client(m, json_flag=False)
    m.add_argument("member", metavar="MEMBER", help="the member's peer id or hex public key")
    m.add_argument("--charter", required=True, metavar="FILE", help="the network's charter file")
    m.add_argument("--from-ms", type=int, metavar="MS",
                   help="revoked from this instant (ms since the epoch; default now)")
    m.add_argument("-o", "--output", metavar="FILE", help="also write the list (hex) to FILE")
    m.add_argument("--publish", action="store_true",
                   help="publish it through the running node of --data-dir / --api")
    m = member.add_parser("show", help="print a credential",
                          description="Decode a credential: the data dir's, or FILE.")
    data_dir(m)
    m.add_argument("file", nargs="?", metavar="FILE", help="a credential file (hex)")
    m.add_argument("--json", action="store_true", help="print the fields as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that left shows here, where it is handled, not at exit
        return status
    except UsageError as exc:
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `neuroshard-node market | head -3`: the reader left; that is not our error. Point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        _stdout_to_devnull()
        return EXIT_OK


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at /dev/null (nobody reads it any more)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# ---------------------------------------------------------------------------------------------
# local commands


def cmd_init(args: argparse.Namespace) -> int:
    from neuroshard_p2p.node.datadir import ensure_data_dir

    report = ensure_data_dir(args.data_dir)
    if report.created:
        print(f"initialised {report.path} ({', '.join(report.created)})")
    else:
        print(f"{report.path} already initialised")
    print(f"peer id: {report.peer_id}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from neuroshard_p2p.node.datadir import load_api_token, rotate_api_token

    print(rotate_api_token(args.data_dir) if args.rotate else load_api_token(args.data_dir))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from neuroshard_p2p.node.datadir import ensure_data_dir

    check_backend_flags(args)  # before creating anything: a usage error leaves no trace
    _setup_logging(args.log_level)
    report = ensure_data_dir(args.data_dir)
    if report.created:
        print(f"initialised {report.path} ({', '.join(report.created)})", flush=True)
    settings = run_settings(args)
    try:
        trio.run(_run_node, settings)
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    return EXIT_OK


def run_settings(args: argparse.Namespace) -> NodeSettings:
    """The settings `run` starts a node with: defaults, then <data-dir>/config.toml, then the
    flags given (an absent flag keeps the file's value)."""
    if args.network is not None and args.charter is not None:
        raise UsageError(args.command_parser, "give --network NAME (a built-in network) or "
                                              "--charter FILE, not both")
    overrides = {
        "listen": tuple(args.listen) if args.listen else None,
        "bootstrap": tuple(args.bootstrap) if args.bootstrap else None,
        "network": args.network,
        "charter": os.path.abspath(args.charter) if args.charter else None,
        "api": args.api, "capacity": args.capacity,
        "min_price": args.min_price, "backend": args.backend, "backend_url": args.backend_url,
        "backend_model": args.backend_model, "backend_timeout_s": args.backend_timeout,
        "openai_max_price": args.openai_max_price,
        "openai_default_max_tokens": args.openai_max_tokens,
        "api_cors_origins": tuple(args.api_cors_origin) if args.api_cors_origin else None,
        "mdns": args.mdns, "relay_service": args.relay_service, "upnp": args.upnp,
    }
    return NodeSettings.load(args.data_dir, overrides)


def check_backend_flags(args: argparse.Namespace) -> None:
    """Refuse backend flags that cannot work (UsageError, exit status 2): a URL that is not
    http(s), an empty model, a non-positive timeout, a URL or model for the synthetic backend,
    or the openai backend without a URL and a model (from the flags or config.toml)."""
    from neuroshard_p2p.node.settings import read_config_tables

    parser: argparse.ArgumentParser = args.command_parser
    url, model, timeout = args.backend_url, args.backend_model, args.backend_timeout
    if url is not None:
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest.strip("/"):
            raise UsageError(parser, f"--backend-url must be http://host:port or "
                                     f"https://host:port, got {url!r}")
    if model is not None and not model.strip():
        raise UsageError(parser, "--backend-model must not be empty")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(parser, f"--backend-timeout must be > 0 seconds, got {timeout:g}")
    if args.backend is None and url is None and model is None:
        return  # the file decides; a bad combination there is a config error naming its keys
    # What config.toml says (checked as a whole when the settings are built, after this).
    node_table, _ = read_config_tables(args.data_dir)
    file_backend, file_url, file_model = (node_table.get("backend", "synthetic"),
                                          node_table.get("backend_url", ""),
                                          node_table.get("backend_model", ""))
    backend = args.backend or file_backend
    where = f"[node] of {args.data_dir}/config.toml"
    if backend == "synthetic":
        given = [flag for flag, value in (("--backend-url", url), ("--backend-model", model))
                 if value is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(parser, f"{' and '.join(given)} only {verb} to the openai backend "
                                     f"(--backend openai, or backend = \"openai\" in {where})")
    elif backend == "openai":
        missing = []
        if url is None and not (isinstance(file_url, str) and file_url):
            missing.append("--backend-url URL")
        if model is None and not (isinstance(file_model, str) and file_model):
            missing.append("--backend-model NAME")
        if missing:
            raise UsageError(parser, f"the openai backend needs {' and '.join(missing)} (or "
                                     f"backend_url and backend_model in {where})")


def _stop_signals() -> list[int]:
    """The signals on which `run` withdraws and stops: Ctrl-C, a service manager's stop, and, as
    kubo's daemon does, the terminal going away (SIGHUP: an SSH session that drops), unless
    SIGHUP is ignored already (`nohup`), which the node leaves as it is."""
    stops = [signal.SIGINT, signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        stops.append(hangup)
    return stops


def _say(line: str) -> None:
    """print() for `run`: after a hangup the terminal refuses writes (EIO), and a reader that
    left refuses them too (EPIPE); the node still stops cleanly, its lines going to /dev/null."""
    try:
        print(line, flush=True)
    except OSError:
        _stdout_to_devnull()


async def _run_node(settings: NodeSettings) -> None:
    import trio

    from neuroshard_p2p.daemon import Daemon
    from neuroshard_p2p.node.errors import NodeError

    with trio.open_signal_receiver(*_stop_signals()) as signals:
        try:
            # A second signal cuts the stop's wait for the jobs under way short (the stop stays
            # clean: the withdrawal is still published).
            async with Daemon(settings, stop_now=lambda: _next_signal(signals)) as daemon:
                node = daemon.node
                assert node is not None
                print(f"neuroshard-node {__version__}: peer id {node.peer_id}", flush=True)
                charter = settings.charter
                print(f"network {settings.network} ({charter.policy}, model {charter.model}; "
                      f"topic {node.topic})", flush=True)
                print(f"backend {_backend_line(settings)}", flush=True)
                print("bootstrap other nodes from:", flush=True)
                for addr in _shareable(node.addrs, settings.listen):
                    print(f"  {addr}", flush=True)
                if daemon.api_url:
                    print(f"dashboard: {daemon.api_url}/", flush=True)
                    print(f"API token: neuroshard-node token --data-dir {settings.data_dir}",
                          flush=True)
                print("ready (Ctrl-C to stop)", flush=True)
                async with trio.open_nursery() as printer:
                    printer.start_soon(_print_reachability, node)
                    printer.start_soon(_print_alone, node, settings)
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        _say(f"{name}: withdrawing and stopping")
                        if node.jobs.under_way and settings.shutdown_drain_s > 0:
                            _say(f"waiting up to {settings.shutdown_drain_s:g} s for "
                                 f"{node.jobs.under_way} job(s) under way to end ({name} "
                                 f"again: stop now)")
                        break
                    printer.cancel_scope.cancel()
        except (NodeError, ConfigError) as exc:
            raise CliError(str(exc)) from None
    _say("stopped")


async def _next_signal(signals: Any) -> None:
    async for signum in signals:
        _say(f"{signal.Signals(signum).name}: not waiting for the jobs under way")
        return


async def _print_reachability(node: Any) -> None:
    """One line each time the AutoNAT verdict or the relay reservations change:
    `reachability: private — <advice>` (README: "join a testnet from home")."""
    reach = node.reach
    shown = None
    while True:
        line = f"reachability: {reach.state.reachability} — {reach.advice()}"
        if reach.state.relays:
            line += "; relayed addresses: " + ", ".join(str(a) for a in node.addrs
                                                      if "p2p-circuit" in a)
        if line != shown:
            _say(line)
            shown = line
        await reach.wait_changed()


#: How long `run` waits for a first peer before it says how to get one.
ALONE_AFTER_S = 20.0


async def _print_alone(node: Any, settings: NodeSettings, after_s: float = ALONE_AFTER_S) -> None:
    """A node that has no peer ALONE_AFTER_S after it started says why and what to do (a first
    run on the default network: its charter names no bootstrap peer, so the node waits for
    someone to dial it or for mDNS to find a node on this LAN); then one line when the first
    peer arrives. Nothing while it has peers."""
    import trio

    with trio.move_on_after(after_s):
        while node.peer_count == 0:
            await trio.sleep(0.5)
        return
    if settings.bootstrap_peers:
        how = (f"none of its {len(settings.bootstrap_peers)} bootstrap peer(s) answered (see "
               "the log), and nobody dialled it")
    else:
        how = ("it has no bootstrap peer (--bootstrap, or the network's charter)"
               + (" and found no node on this LAN by mDNS" if settings.mdns else "")
               + ", and nobody dialled it")
    _say(f"no peers after {after_s:g} s: {how}. Give it one: neuroshard-node run "
         "--bootstrap <a node's multiaddr> (`neuroshard-node id` on that node prints it); "
         "until then it prices only what it offers and queues itself")
    while node.peer_count == 0:
        await trio.sleep(0.5)
    _say(f"first peer connected ({node.peer_count} now)")


def _backend_line(settings: NodeSettings) -> str:
    if settings.backend == "openai":
        return (f"openai: model {settings.backend_model} at {settings.backend_url} "
                f"(timeout {settings.backend_timeout_s:g} s)")
    return "synthetic (tokens at the offered rate)"


def _shareable(addrs: list[str], listen: Sequence[str]) -> list[str]:
    """The node's advertised addresses, plus the loopback one when it listens on every interface
    (handy for a second node on the same machine; never advertised to peers)."""
    result = list(addrs)
    if any(a.startswith("/ip4/0.0.0.0/") for a in listen):
        for addr in addrs:
            parts = addr.split("/")
            if len(parts) > 4 and parts[1] == "ip4" and parts[3] == "tcp":
                loopback = "/".join(["", "ip4", "127.0.0.1", *parts[3:]])
                if loopback not in result:
                    result.append(loopback)
                break
    return result


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # py-libp2p is chatty at INFO (auto-connector state, connection churn): keep its warnings.
    libp2p_level = logging.DEBUG if level == "debug" else logging.ERROR
    logging.getLogger("libp2p").setLevel(libp2p_level)
    logging.getLogger("multiaddr").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# client commands (talk to a running node's HTTP API)


def _api_base(args: argparse.Namespace) -> str:
    from neuroshard_p2p.node.datadir import read_api_url

    if args.api:
        return args.api if "://" in args.api else f"http://{args.api}"
    written = read_api_url(args.data_dir)
    if written:
        return written
    # No URL written: this data dir's node is not running (or runs without an API). Asking the
    # configured address instead would reach whatever else listens there, e.g. the default
    # node on 127.0.0.1:8000, and report its market, peer id or token errors as this one's.
    settings = NodeSettings.load(args.data_dir)
    if not settings.api_enabled:
        raise CliError(f"the node of {args.data_dir} runs no HTTP API (api = \"off\" in "
                       f"config.toml); nothing to ask")
    raise CliError(f"no running node for {args.data_dir}: `neuroshard-node run --data-dir "
                   f"{args.data_dir}` writes {args.data_dir}/api when it starts (or pass --api URL)")


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None,
          params: dict[str, Any] | None = None, answers: tuple[int, ...] = ()) -> Any:
    """The node's JSON answer; a 4xx/5xx is a CliError unless its status is in `answers`."""
    import httpx

    base = _api_base(args).rstrip("/")
    headers = {"Accept": "application/json"}
    if method == "POST":
        from neuroshard_p2p.node.datadir import load_api_token

        headers["Authorization"] = f"Bearer {load_api_token(args.data_dir)}"
    try:
        response = httpx.request(method, base + path, json=body, params=params, headers=headers,
                                 timeout=10.0)
    except httpx.ConnectError:
        raise CliError(f"no node answers at {base} (is `neuroshard-node run` running with "
                       f"--data-dir {args.data_dir}?)") from None
    except httpx.HTTPError as exc:
        raise CliError(f"request to {base}{path} failed: {exc}") from None
    try:
        data = response.json()
    except ValueError:
        raise CliError(f"{base}{path} answered {response.status_code} without JSON") from None
    if response.status_code >= 400 and response.status_code not in answers:
        message = data.get("error") if isinstance(data, dict) else None
        raise CliError(f"node refused ({response.status_code}): {message or data}")
    return data


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def cmd_id(args: argparse.Namespace) -> int:
    from neuroshard_p2p.identity import peer_id_of
    from neuroshard_p2p.node.datadir import load_private_key

    try:
        data = _call(args, "GET", "/api/node")
    except CliError as exc:
        key = load_private_key(args.data_dir)
        peer_id = peer_id_of(key.public_key.format(compressed=True))
        settings = NodeSettings.load(args.data_dir)
        data = {"peer_id": peer_id, "addrs": [f"{a}/p2p/{peer_id}" for a in settings.listen],
                "running": False, "note": str(exc)}
    if args.json:
        _print_json(data)
        return EXIT_OK
    print(f"peer id: {data['peer_id']}")
    from neuroshard_p2p.identity import public_key_from_peer_id
    print(f"key:     {public_key_from_peer_id(data['peer_id']).hex()}  (as a charter authority: "
          f"`charter new --members --authority KEY`)")
    if data.get("running") is False:
        print("(node not running; configured listen addresses:)")
    for addr in data.get("addrs", []):
        print(f"  {addr}")
    clock = data.get("clock")
    if clock:
        print(f"clock:   {clock['text']}")
    return EXIT_OK


def cmd_peers(args: argparse.Namespace) -> int:
    data = _call(args, "GET", "/api/peers")
    if args.json:
        _print_json(data)
        return EXIT_OK
    print(f"{data['count']} peer(s)")
    for peer in data["peers"]:
        clock = peer.get("clock_offset_s")
        # a clock 5 s or more from ours (clockwatch.WARN_S) is worth telling its operator about
        note = f"  (clock {clock:+.0f} s from ours)" if clock is not None and abs(clock) >= 5 else ""
        print(f"  {peer['peer_id']}  {' '.join(peer['addrs'])}{note}")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    data = _call(args, "GET", "/api/health", answers=(503,))
    if args.json:
        _print_json(data)
    elif data["ok"]:
        print(f"ok: {data['peers']} peer(s), clock {data['clock']}")
    else:
        for problem in data["problems"]:
            print(f"{problem['check']}: {problem['detail']}")
    return EXIT_OK if data["ok"] else EXIT_ERROR


def cmd_market(args: argparse.Namespace) -> int:
    data = _call(args, "GET", "/api/market", params={"at": args.at} if args.at is not None else None)
    if args.json:
        _print_json(data)
        return EXIT_OK
    utilization = data["utilization"]
    print(f"network          {data['network']} ({data['mode']} pricing)")
    print(f"tick             {data['tick']}")
    print(f"price            {data['current_price']:.9f} NEURO per 1M tokens "
          f"({data['current_price_nano']} nano)")
    print(f"target price     {data['target_price']:.9f}")
    print(f"supply           {data['supply_tokens_per_sec']} tokens/s from "
          f"{data['available_nodes']} node(s)")
    print(f"demand           {data['demand_tokens_waiting']} tokens waiting in "
          f"{data['pending_requests']} request(s)")
    print(f"utilization      {'∞' if utilization is None else f'{utilization:.3f}'}")
    return EXIT_OK


def cmd_register(args: argparse.Namespace) -> int:
    data = _call(args, "POST", "/api/market/register",
                 {"tokens_per_second": args.capacity, "min_price": args.min_price})
    if args.json:
        _print_json(data)
    else:
        offer = data["offer"]
        print(f"offering {offer['tokens_per_second']} tokens/s at >= {offer['min_price']} NEURO "
              f"per 1M tokens")
    return EXIT_OK


def cmd_withdraw(args: argparse.Namespace) -> int:
    data = _call(args, "POST", "/api/market/withdraw")
    if args.json:
        _print_json(data)
    else:
        print("capacity withdrawn")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"tokens": args.tokens, "max_price": args.max_price, "tier": args.tier,
                            "prompt": args.prompt}
    if args.user:
        body["user"] = args.user
    data = _call(args, "POST", "/api/market/requests", body)
    if args.json:
        _print_json(data)
        return EXIT_OK
    for line in describe_request(data, _api_base(args).rstrip("/")):
        print(line)
    return EXIT_OK


def cmd_chat(args: argparse.Namespace) -> int:
    """Stream a chat completion from the node's /v1 endpoint to the terminal."""
    import httpx

    from neuroshard_p2p.node.datadir import load_api_token

    base = _api_base(args).rstrip("/")
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    body: dict[str, Any] = {"messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.max_price is not None:
        body["provider"] = {"max_price": {"completion": args.max_price}}
    for name in ("temperature", "top_p", "seed", "stop"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    headers = {"Authorization": f"Bearer {load_api_token(args.data_dir)}"}
    market: dict[str, Any] = {}
    raw: list[Any] = []
    try:
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=headers,
                          timeout=httpx.Timeout(10.0, read=None)) as response:
            if response.status_code != 200:
                response.read()
                try:
                    error = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    error = response.text[:300]
                retry = response.headers.get("retry-after")
                raise CliError(f"{response.status_code}: {error}"
                               + (f" (retry after {retry} s)" if retry else ""))
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                raw.append(event)
                if "error" in event:
                    raise CliError(f"the request failed: {event['error'].get('message')}")
                market = event.get("neuroshard", market)
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text and not args.json:
                        sys.stdout.write(text)
                        sys.stdout.flush()
    except httpx.ConnectError:
        raise CliError(f"no node answers at {base} (is `neuroshard-node run` running with "
                       f"--data-dir {args.data_dir}?)") from None
    except KeyboardInterrupt:
        print("\n(cancelled: the provider stops; you pay for the tokens served so far)",
              file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        _print_json(raw)
        return EXIT_OK
    print()
    if market:
        unsent = ("; its backend used its own sampling settings (the provider's version does "
                  "not take them)" if market.get("sampling") == "not_sent" else "")
        print(f"[{market['tokens_served']} tokens from {market['provider']} at "
              f"{market['locked_price']:.9f} NEURO per 1M tokens: cost {market['cost_nano']} "
              f"nano-NEURO, burned {market['burn_nano']}{unsent}]", file=sys.stderr)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    data = _call(args, "GET", f"/api/market/requests/{quote(args.request_id, safe='')}")
    if args.json:
        _print_json(data)
        return EXIT_OK
    for line in describe_request(data, _api_base(args).rstrip("/")):
        print(line)
    if data.get("output"):
        print()
        print(data["output"])
    return EXIT_OK


def describe_request(status: dict[str, Any], api: str) -> list[str]:
    """What became of a submitted request, from the node's answer: its id, the price it locked,
    its state with the reason, and where to follow it."""
    state, reason = status["state"], status.get("reason") or ""
    provider = status.get("provider")
    lines = [
        f"request {status['request_id']}: {status['tokens']} tokens",
        f"locked price     {status['locked_price_nano'] / 1e9:.9f} NEURO per 1M tokens "
        f"({status['locked_price_nano']} nano; your max {status['max_price_nano'] / 1e9:.9f})",
        f"state            {state}" + (f": {reason}" if reason else ""),
    ]
    if provider:
        lines.append(f"provider         {provider}")
    if status.get("cost_nano") is not None:
        lines.append(f"cost             {status['cost_nano'] / 1e9:.9f} NEURO for "
                     f"{status['tokens_served']} tokens served")
    if state not in ("completed", "failed", "expired"):
        lines.append(f"follow it        curl {api}/api/market/requests/{status['request_id']}")
    return lines


def cmd_ledger(args: argparse.Namespace) -> int:
    from neuroshard_p2p.ledger import LedgerError, ledger_summary, ledger_verify

    if args.action == "verify":
        ok, report = ledger_verify(args.data_dir)
        print(report)
        return EXIT_OK if ok else EXIT_ERROR
    if args.recent < 0:
        raise CliError("--recent must be >= 0")
    try:
        data = ledger_summary(args.data_dir, recent_limit=args.recent)
    except LedgerError as exc:  # a damaged file
        raise CliError(str(exc)) from None
    if args.json:
        _print_json(data)
        return EXIT_OK
    if not data["exists"]:
        print(f"no ledger at {data['path']} yet: nothing settled")
        return EXIT_OK
    for name, totals in (("all", data["totals"]), *data["by_role"].items()):
        print(f"{name:9} {totals['settlements']:6d} settlements  {totals['tokens']:12d} tokens  "
              f"paid {totals['paid']} = earned {totals['earned']} + burned {totals['burned']} nano")
    refused = {reason: n for reason, n in data["refusals"].items() if n}
    print(f"refused   {sum(refused.values())}" + (f" ({refused})" if refused else ""))
    for row in data["recent"]:
        print(f"  {row['role']:8} {row['request_id']}  {row['tokens']} tokens at "
              f"{row['price_nano']} nano/1M  paid {row['payment']}  provider {row['provider']}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# charters (local: no node needed)


def cmd_charter(args: argparse.Namespace) -> int:
    return {"new": cmd_charter_new, "show": cmd_charter_show,
            "verify": cmd_charter_verify}[args.charter_command](args)


def cmd_charter_new(args: argparse.Namespace) -> int:
    """Testnet's values with the flags' changes, checked as a charter file is (every message
    names the key); printed or written to -o."""
    import tomllib

    from neuroshard_p2p.charter import PARAM_KEYS, Charter, builtin

    parser: argparse.ArgumentParser = args.command_parser
    if args.authority and not args.members:
        raise UsageError(parser, "--authority needs --members (an open network has no "
                                 "authorities)")
    if args.members and not args.authority:
        raise UsageError(parser, "--members needs at least one --authority HEX (the keys whose "
                                 "credentials admit members)")
    params = dict(builtin("testnet").params)
    if args.members:
        # Admission is what bounds a members network; the work ramp would only make members
        # grind (a --set below still asks for it).
        params["identity_work_bits"] = 0
    for item in args.params:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in PARAM_KEYS:
            raise UsageError(parser, f"--set needs KEY=VALUE with KEY one of "
                                     f"{', '.join(PARAM_KEYS)}; got {item!r}")
        try:  # a TOML value (16, 0.5, true); anything else is text (curve=normalized)
            params[key] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            params[key] = text.strip()
    if args.output and os.path.exists(args.output):
        raise CliError(f"{args.output} exists; a charter file is never overwritten (a changed "
                       f"charter is another network): choose another name or remove it")
    charter = Charter.from_mapping({
        "format": 2, "name": args.name, "model": args.model, "description": args.description,
        "bootstrap": list(args.bootstrap),
        "admission": {"policy": "members" if args.members else "open",
                      "authorities": list(args.authority)},
        "params": params}, source="new charter")
    text = charter.to_toml()
    if not args.output:
        print(text, end="")
        return EXIT_OK
    try:
        with open(args.output, "x", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"wrote {args.output}: network {charter.network_id}")
    return EXIT_OK


def cmd_charter_show(args: argparse.Namespace) -> int:
    from neuroshard_p2p.charter import BUILTIN, Charter, builtin

    if args.source is None:
        charter = NodeSettings.load(args.data_dir).charter
    elif args.source in BUILTIN and not os.path.exists(args.source):
        charter = builtin(args.source)
    else:
        charter = Charter.from_toml_file(args.source)
    if args.json:
        _print_json(charter.describe())
    else:
        print(charter.to_toml(), end="")
    return EXIT_OK


def cmd_charter_verify(args: argparse.Namespace) -> int:
    """Exit 1 unless FILE is a valid charter whose network id is the one --id and its own first
    line state."""
    from neuroshard_p2p.charter import Charter, stated_network_id

    try:
        with open(args.file, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {args.file}: {getattr(exc, 'strerror', None) or exc}") from None
    charter = Charter.from_toml(text, args.file)
    actual = charter.network_id
    for claimed, where in ((args.network_id, "--id"),
                           (stated_network_id(text), "its first line")):
        if claimed is not None and claimed != actual:
            raise CliError(f"{args.file} is network {actual}, not {claimed} as {where} says: its "
                           f"hashed content (name, model, admission or a [params] value) differs "
                           f"from that network's charter")
    print(f"{args.file}: network {actual} (hash {charter.hash.hex()}): ok")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# members (local: sign with the data dir's key)


def _member_key(text: str) -> bytes:
    from neuroshard_p2p.identity import public_key_from_peer_id

    try:
        if len(text) == 66:
            key = bytes.fromhex(text)
        else:
            key = public_key_from_peer_id(text)
        import coincurve
        coincurve.PublicKey(key)
    except Exception:  # noqa: BLE001 - any parse failure is the same user error
        raise CliError(f"{text!r} is neither a peer id (16Uiu2…) nor a 33-byte hex public "
                       f"key") from None
    return key


def _members_charter(path: str) -> Any:
    from neuroshard_p2p.charter import Charter

    charter = Charter.from_toml_file(path)
    if not charter.members:
        raise CliError(f"{path} is an open network ({charter.network_id}): it has no members")
    return charter


def _authority_key(args: argparse.Namespace, charter: Any) -> Any:
    from neuroshard_p2p.identity import peer_id_of
    from neuroshard_p2p.node.datadir import load_private_key

    key = load_private_key(args.data_dir)
    public = key.public_key.format(compressed=True)
    if public not in charter.authorities:
        raise CliError(f"the key of {args.data_dir} ({peer_id_of(public)}, {public.hex()}) is "
                       f"not an authority of network {charter.network_id}")
    return key


def cmd_member(args: argparse.Namespace) -> int:
    return {"issue": cmd_member_issue, "revoke": cmd_member_revoke,
            "show": cmd_member_show}[args.member_command](args)


def cmd_member_issue(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from neuroshard_p2p.identity import peer_id_of
    from neuroshard_p2p.node.datadir import CREDENTIAL_FILE, save_hex_file
    from neuroshard_p2p.wire import WireError
    from neuroshard_p2p.wire.membership import issue_credential
    from neuroshard_p2p.wire.messages import ROLE_GATEWAY, ROLE_PROVIDER

    charter = _members_charter(args.charter)
    key = _authority_key(args, charter)
    member = _member_key(args.member)
    roles = 0
    for role in (r.strip() for r in args.roles.split(",")):
        if role not in ("provider", "gateway"):
            raise UsageError(args.command_parser, f"--roles takes provider and/or gateway, got "
                                                  f"{role!r}")
        roles |= ROLE_PROVIDER if role == "provider" else ROLE_GATEWAY
    market = charter.market
    now_ms = int(time.time() * 1000)
    if args.days <= 0:
        raise UsageError(args.command_parser, "--days must be > 0")
    try:
        wire = issue_credential(
            key, charter.hash, member, roles=roles,
            max_tokens_per_second=(market.max_node_tokens_per_s if args.max_capacity is None
                                   else args.max_capacity),
            max_pending_tokens=(market.max_signer_pending_tokens if args.max_demand is None
                                else args.max_demand),
            max_pending_requests=(market.max_signer_pending_requests
                                  if args.max_requests is None else args.max_requests),
            issued_at_ms=now_ms, expires_at_ms=now_ms + int(args.days * 86_400_000))
    except WireError as exc:
        raise CliError(f"cannot issue: {exc}") from None
    if args.install:
        target = Path(args.install).expanduser() / CREDENTIAL_FILE
        save_hex_file(target, wire)
        print(f"installed {target}: {peer_id_of(member)} is a member of {charter.network_id}")
    elif args.output:
        save_hex_file(Path(args.output), wire)
        print(f"wrote {args.output}: {peer_id_of(member)} is a member of {charter.network_id}; "
              f"the member puts it at <data-dir>/{CREDENTIAL_FILE}")
    else:
        print(wire.hex())
    return EXIT_OK


def cmd_member_revoke(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from neuroshard_p2p.identity import peer_id_of
    from neuroshard_p2p.node.datadir import load_hex_file, revocations_file, save_hex_file
    from neuroshard_p2p.wire import decode_unchecked_time
    from neuroshard_p2p.wire.membership import revoke
    from neuroshard_p2p.wire.messages import RevocationList

    charter = _members_charter(args.charter)
    key = _authority_key(args, charter)
    member = _member_key(args.member)
    state = Path(args.data_dir).expanduser() / revocations_file(charter.network_id)
    revoked: dict[bytes, int] = {}
    seq = 0
    previous = load_hex_file(state, "revocation list")
    if previous is not None:
        held = decode_unchecked_time(previous)
        if not isinstance(held, RevocationList):
            raise CliError(f"{state} does not hold a revocation list")
        revoked, seq = dict(held.revoked), held.seq
    now_ms = int(time.time() * 1000)
    revoked[member] = min(revoked.get(member, now_ms if args.from_ms is None else args.from_ms),
                          now_ms if args.from_ms is None else args.from_ms)
    wire = revoke(key, charter.hash, revoked, seq=max(seq + 1, now_ms), issued_at_ms=now_ms)
    save_hex_file(state, wire)
    if args.output:
        save_hex_file(Path(args.output), wire)
    print(f"{peer_id_of(member)} revoked from {revoked[member]} ms; the list of "
          f"{charter.network_id} names {len(revoked)} member(s), kept in {state}")
    if args.publish:
        _call(args, "POST", "/api/revocations", {"list": wire.hex()})
        print("published through the running node")
    return EXIT_OK


def cmd_member_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from neuroshard_p2p.identity import peer_id_of
    from neuroshard_p2p.node.datadir import CREDENTIAL_FILE, load_hex_file
    from neuroshard_p2p.wire import WireError, decode_unchecked_time
    from neuroshard_p2p.wire.messages import Credential

    path = Path(args.file) if args.file else Path(args.data_dir).expanduser() / CREDENTIAL_FILE
    wire = load_hex_file(path, "credential")
    if wire is None:
        raise CliError(f"no credential at {path}")
    try:
        credential = decode_unchecked_time(wire)
    except WireError as exc:
        raise CliError(f"{path}: not a credential: {exc}") from None
    if not isinstance(credential, Credential):
        raise CliError(f"{path}: a {type(credential).__name__}, not a credential")
    roles = [name for bit, name in ((1, "provider"), (2, "gateway")) if credential.roles & bit]
    data = {"member": peer_id_of(credential.member), "member_key": credential.member.hex(),
            "authority": credential.signer.hex(), "network_hash": credential.network.hex(),
            "roles": roles, "max_tokens_per_second": credential.max_tokens_per_second,
            "max_pending_tokens": credential.max_pending_tokens,
            "max_pending_requests": credential.max_pending_requests,
            "issued_at_ms": credential.issued_at_ms, "expires_at_ms": credential.expires_at_ms}
    if args.json:
        _print_json(data)
    else:
        for name, value in data.items():
            print(f"{name}: {', '.join(value) if isinstance(value, list) else value}")
    return EXIT_OK


COMMANDS = {
    "ledger": cmd_ledger, "charter": cmd_charter, "member": cmd_member,
    "init": cmd_init, "run": cmd_run, "id": cmd_id, "peers": cmd_peers, "health": cmd_health,
    "market": cmd_market,
    "register": cmd_register, "withdraw": cmd_withdraw, "submit": cmd_submit, "chat": cmd_chat,
    "status": cmd_status, "token": cmd_token,
}


if __name__ == "__main__":
    sys.exit(main())
