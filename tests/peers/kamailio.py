"""Kamailio 5.6 as a loopback registrar and record-routing proxy with digest auth.

    with Kamailio(users={"alice": "secret", "bob": "pw"}) as kam:
        kam.port, kam.domain             # 127.0.0.1 and a free port: AOR sip:alice@127.0.0.1:PORT
        kam.aor("alice")                 # "sip:alice@127.0.0.1:PORT"
        kam.wait_registered("alice")     # polls `kamcmd ul.dump` under a deadline
        kam.registrations()              # {"alice": ["sip:alice@127.0.0.1:5072;..."], ...}

The config is written to a temp folder: it listens on 127.0.0.1 only (UDP, and TCP when
`tcp=True`), challenges REGISTER (401, RFC 3261 s22.2) and, unless `auth_calls=False`,
every out-of-dialog INVITE (407, s22.3), checking passwords held in the config itself with
`pv_auth_check` (no database). INVITEs are record-routed so the whole dialog passes through
the proxy. Readiness is `kamcmd core.version` over the ctl module's unix socket; stop is by PID.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
from pathlib import Path

from . import (
    HOST,
    PeerError,
    PeerHarness,
    free_port,
    missing_tools,
    stop_process,
    tail_file,
    wait_until,
)

_USER_RE = re.compile(r"^[A-Za-z0-9._~-]+$")


def kamailio_missing() -> str | None:
    """Why Kamailio cannot run here (None when it can)."""
    why = missing_tools("kamailio", "kamcmd")
    if why:
        return f"{why}: apt-get install kamailio"
    if module_dir() is None:
        return "Kamailio modules (registrar.so) not found under /usr/lib: apt-get install kamailio"
    return None


def module_dir() -> str | None:
    """The folder holding Kamailio's modules (where registrar.so lives)."""
    for pattern in ("/usr/lib/*/kamailio/modules/registrar.so",
                    "/usr/lib/kamailio/modules/registrar.so",
                    "/usr/lib64/kamailio/modules/registrar.so",
                    "/usr/local/lib*/kamailio/modules/registrar.so"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return os.path.dirname(hits[0])
    return None


def _quote(value: str) -> str:
    # Passwords end up inside a Kamailio string literal: keep them unambiguous.
    if '"' in value or "\\" in value or "\n" in value:
        raise ValueError(f"Kamailio password {value!r} has a quote, backslash or newline")
    return value


def render_config(*, port: int, ctl_socket: str, users: dict[str, str], mpath: str,
                  tcp: bool = False, auth_calls: bool = True, realm: str = HOST,
                  debug: int = 1) -> str:
    """The kamailio.cfg text (exposed so a test can read what was run)."""
    for user in users:
        if not _USER_RE.match(user):
            raise ValueError(f"Kamailio user name {user!r} is not a plain SIP user part")
    # One branch per user: the config is the password store (no database, no htable file).
    lookup = "\n".join(
        f'    {"if" if i == 0 else "} else if"} ($var(user) == "{u}") {{\n'
        f'        $var(password) = "{_quote(p)}";'
        for i, (u, p) in enumerate(users.items()))
    if lookup:
        lookup += "\n    }"
    listen = f"listen=udp:{HOST}:{port}\n"
    listen += f"listen=tcp:{HOST}:{port}\n" if tcp else "disable_tcp=yes\n"
    return f"""#!KAMAILIO
# Written by tests/peers/kamailio.py: loopback only, usrloc in memory, digest auth via pv.
debug={debug}
log_stderror=yes
memdbg=5
memlog=5
children=2
auto_aliases=no
alias="{HOST}:{port}"
{listen}
mpath="{mpath}"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "ctl.so"
loadmodule "auth.so"

modparam("ctl", "binrpc", "unix:{ctl_socket}")
modparam("usrloc", "db_mode", 0)
modparam("registrar", "max_expires", 3600)
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 1)
modparam("tm", "fr_timer", 5000)
modparam("tm", "fr_inv_timer", 30000)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (!sanity_check("17895", "7")) {{
        xlog("L_WARN", "malformed request from $si:$sp\\n");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            route(RELAY);
        }}
        exit;
    }}
    if (!is_method("ACK")) {{
        # A retransmission of a known transaction: tm resends the reply and stops here.
        t_check_trans();
    }}
    if (has_totag()) {{
        route(WITHINDLG);
        exit;
    }}
    if (is_method("OPTIONS") && $rU == $null) {{
        sl_send_reply("200", "Keepalive");
        exit;
    }}
    remove_hf("Route");
    if (is_method("INVITE|SUBSCRIBE")) {{
        record_route();
    }}
    route(AUTH);
    if (is_method("REGISTER")) {{
        if (!save("location")) {{
            sl_reply_error();
        }}
        exit;
    }}
    if ($rU == $null) {{
        sl_send_reply("484", "Address Incomplete");
        exit;
    }}
    if (!lookup("location")) {{
        t_newtran();
        t_reply("404", "Not Found");
        exit;
    }}
    route(RELAY);
}}

route[RELAY] {{
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}

route[WITHINDLG] {{
    if (loose_route()) {{
        route(RELAY);
        exit;
    }}
    if (is_method("ACK")) {{
        if (t_check_trans()) {{
            route(RELAY);
        }}
        exit;
    }}
    sl_send_reply("404", "Not here");
    exit;
}}

route[AUTH] {{
    if (!is_method("REGISTER") && {0 if auth_calls else 1}) {{
        return;
    }}
    if (!is_method("REGISTER|INVITE|MESSAGE|SUBSCRIBE")) {{
        return;
    }}
    # RFC 3261 s22: REGISTER is challenged by the registrar (401, To user),
    # other requests by the proxy (407, From user).
    if (is_method("REGISTER")) {{
        $var(user) = $tU;
    }} else {{
        $var(user) = $fU;
    }}
    $var(password) = "";
{lookup}
    if ($var(password) == "") {{
        xlog("L_NOTICE", "auth: unknown user $var(user) from $si:$sp\\n");
        sl_send_reply("403", "Forbidden");
        exit;
    }}
    # auth_challenge picks 401 for REGISTER, 407 otherwise; check 1 ties the
    # credentials' user to the To (REGISTER) or From user.
    if (!pv_auth_check("{realm}", "$var(password)", "0", "1")) {{
        xlog("L_NOTICE", "auth: $rm $var(user) failed ($rc)\\n");
        auth_challenge("{realm}", "0");
        exit;
    }}
    consume_credentials();
}}
"""


class Kamailio(PeerHarness):
    """One Kamailio process on 127.0.0.1 (registrar + record-routing proxy); see the module
    docstring. Use as a context manager, or call start()/stop()."""

    def __init__(self, users: dict[str, str] | None = None, *, port: int | None = None,
                 tcp: bool = False, auth_calls: bool = True, timeout: float = 10.0,
                 debug: int = 1, workdir: str | os.PathLike | None = None) -> None:
        """`users` maps user name to password; `port` defaults to a free one."""
        self.users = dict(users or {})
        self.tcp = tcp
        self.auth_calls = auth_calls
        self.timeout = timeout
        self.debug = debug
        self.port = port or free_port("both" if tcp else "udp")
        self.domain = f"{HOST}:{self.port}"
        self._workdir = Path(workdir) if workdir else None
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    # ---- paths --------------------------------------------------------------------------
    @property
    def cfg_path(self) -> Path:
        return self._dir() / "kamailio.cfg"

    @property
    def ctl_socket(self) -> Path:
        return self._dir() / "ctl.sock"

    @property
    def log_path(self) -> Path:
        return self._dir() / "kamailio.log"

    def _dir(self) -> Path:
        if self.dir is None:
            if self._workdir is not None:
                self._workdir.mkdir(parents=True, exist_ok=True)
                self.dir = self._workdir
            else:
                # Short prefix: the ctl unix socket path must stay under 108 bytes.
                self.dir = self._make_dir(None, "kam")
        return self.dir

    def aor(self, user: str) -> str:
        """The address of record a UA registers: sip:USER@127.0.0.1:PORT."""
        return f"sip:{user}@{self.domain}"

    @property
    def uri(self) -> str:
        """The proxy's own SIP URI (an outbound proxy / registrar address)."""
        return f"sip:{self.domain}"

    # ---- lifecycle ----------------------------------------------------------------------
    def write_config(self) -> Path:
        mpath = module_dir()
        if mpath is None:
            raise PeerError("Kamailio modules not found under /usr/lib")
        self.cfg_path.write_text(render_config(
            port=self.port, ctl_socket=str(self.ctl_socket), users=self.users, mpath=mpath,
            tcp=self.tcp, auth_calls=self.auth_calls, debug=self.debug))
        return self.cfg_path

    def check_config(self) -> None:
        """`kamailio -c -f CFG`: a config error is a PeerError carrying Kamailio's words."""
        r = subprocess.run(["kamailio", "-c", "-f", str(self.cfg_path)], capture_output=True,
                           text=True, timeout=self.timeout)
        if r.returncode != 0:
            raise PeerError(f"Kamailio config {self.cfg_path} rejected:\n"
                            f"{(r.stderr or r.stdout)[-3000:]}")

    def start(self) -> Kamailio:
        self.write_config()
        self.check_config()
        rundir = self._dir() / "run"
        rundir.mkdir(exist_ok=True)
        log = open(self.log_path, "wb")  # a file, not a pipe: a full pipe would stall it
        try:
            self.proc = subprocess.Popen(
                ["kamailio", "-f", str(self.cfg_path), "-DD", "-E", "-m", "32", "-M", "4",
                 "-P", str(self._dir() / "kamailio.pid"), "-Y", str(rundir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        try:
            wait_until(self.version, self.timeout, f"Kamailio on {self.domain} ready",
                       self.proc, self.output)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, self.timeout)

    def output(self) -> str:
        """Kamailio's log so far (for failure messages)."""
        return tail_file(self.log_path) if self.dir else ""

    # ---- control ------------------------------------------------------------------------
    def kamcmd(self, *args: str, check: bool = True) -> str:
        """Run one RPC over the ctl socket and return its text output."""
        r = subprocess.run(["kamcmd", "-s", f"unix:{self.ctl_socket}", *args],
                           capture_output=True, text=True, timeout=self.timeout)
        if check and r.returncode != 0:
            raise PeerError(f"kamcmd {' '.join(args)} failed: {(r.stderr or r.stdout).strip()}")
        return r.stdout

    def version(self) -> str | None:
        """`core.version`, or None while the ctl socket is not answering yet."""
        if not self.ctl_socket.exists():
            return None
        try:
            out = self.kamcmd("core.version", check=False)
        except subprocess.TimeoutExpired:
            return None
        return out.strip() if "kamailio" in out.lower() else None

    def registrations(self) -> dict[str, list[str]]:
        """Registered contacts per AOR user, parsed from `kamcmd ul.dump`."""
        return parse_ul_dump(self.kamcmd("ul.dump"))

    def stats(self, group: str = "core:") -> dict[str, int]:
        """Counters from `kamcmd stats.get_statistics GROUP`, e.g. stats()["rcv_requests_bye"]
        (a BYE counted here proves record-routing kept the proxy in the dialog)."""
        out: dict[str, int] = {}
        for line in self.kamcmd("stats.get_statistics", group).splitlines():
            name, sep, value = line.partition(" = ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name.strip().split(":", 1)[-1]] = int(value)
        return out

    def wait_registered(self, *users: str, timeout: float | None = None) -> dict[str, list[str]]:
        """Poll until every user has a contact; returns the registrations."""
        def check() -> dict[str, list[str]] | None:
            regs = self.registrations()
            return regs if all(regs.get(u) for u in users) else None
        return wait_until(check, timeout or self.timeout, f"registration of {', '.join(users)}",
                          self.proc, self.output, interval=0.05)


_AOR_RE = re.compile(r"^\s*AoR:\s*(\S+)\s*$")
_CONTACT_RE = re.compile(r"^\s*Address:\s*(\S+)\s*$")


def parse_ul_dump(text: str) -> dict[str, list[str]]:
    """AOR -> contact URIs from kamcmd's `ul.dump` tree output (usrloc 5.x layout:
    `AoR: alice` lines, each followed by `Address: sip:...` lines of its contacts)."""
    regs: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        m = _AOR_RE.match(line)
        if m:
            current = m.group(1)
            regs.setdefault(current, [])
            continue
        m = _CONTACT_RE.match(line)
        if m and current is not None:
            regs[current].append(m.group(1))
    return regs
