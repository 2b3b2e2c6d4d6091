"""HAProxy's Runtime API (the "stats socket") on a UNIX socket, text commands.

Supported, with HAProxy's syntax and answers::

    show info | show stat | show servers state [BACKEND] | help
    set server B/S state ready|drain|maint     set server B/S weight N|N%
    set server B/S health up|stopping|down     set weight B/S N|N%      get weight B/S
    enable server B/S | disable server B/S     shutdown sessions server B/S
    enable health B/S | disable health B/S     enable agent B/S | disable agent B/S
    prompt | quit

Several commands may be given on one line separated by ``;``.  Without
``prompt`` the connection closes after the first line, which is what scripts
and ``community.general.haproxy`` expect.  fleetproxy has no agent checks, so
``enable|disable agent`` answer as HAProxy does for a server without one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from .. import __version__
from ..runtime import DOWN, DRAIN, MAINT, READY, UP
from .views import HAPROXY_COMPAT_VERSION, downtime, haproxy_status

log = logging.getLogger("fleetproxy.admin")

STAT_FIELDS = ["pxname", "svname", "qcur", "qmax", "scur", "smax", "slim", "stot", "bin", "bout", "dreq", "dresp", "ereq", "econ", "eresp", "wretr", "wredis", "status", "weight", "act", "bck", "chkfail", "chkdown", "lastchg", "downtime", "qlimit", "pid", "iid", "sid", "throttle", "lbtot", "tracked", "type", "rate", "rate_lim", "rate_max", "check_status", "check_code", "check_duration", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other", "hanafail", "req_rate", "req_rate_max", "req_tot", "cli_abrt", "srv_abrt", "comp_in", "comp_out", "comp_byp", "comp_rsp", "lastsess", "last_chk", "last_agt", "qtime", "ctime", "rtime", "ttime", "agent_status", "agent_code", "agent_duration", "check_desc", "agent_desc", "check_rise", "check_fall", "check_health", "agent_rise", "agent_fall", "agent_health", "addr", "cookie", "mode", "algo"]

HELP = """The following commands are valid at this level:
  help                                    : this message
  prompt                                  : toggle interactive mode with prompt
  quit                                    : disconnect
  show info                               : report information about the running process
  show stat                               : report counters for each proxy and server (CSV)
  show servers state [<backend>]          : dump volatile server information
  get weight <bk>/<srv>                   : report a server's current weight
  set weight <bk>/<srv> <w>[%]            : change a server's weight
  set server <bk>/<srv> state ready|drain|maint
  set server <bk>/<srv> weight <w>[%]
  set server <bk>/<srv> health up|stopping|down
  enable server <bk>/<srv>                : set a server's state to ready
  disable server <bk>/<srv>               : put a server in maintenance
  shutdown sessions server <bk>/<srv>     : kill a server's sessions
  enable health <bk>/<srv>                : enable health checks
  disable health <bk>/<srv>               : disable health checks
  enable agent <bk>/<srv>                 : (fleetproxy has no agent checks)
  disable agent <bk>/<srv>                : (fleetproxy has no agent checks)
"""


class RuntimeAPI:
    def __init__(self, master: Any) -> None:
        self.master = master

    # -- the socket --------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        interactive = False
        try:
            while True:
                if interactive:
                    writer.write(b"\n> ")
                    await writer.drain()
                try:
                    line = await asyncio.wait_for(reader.readline(), 30 if not interactive else 600)
                except asyncio.TimeoutError:
                    break
                if not line:
                    break
                text = line.decode("utf-8", "replace").strip()
                out, interactive, quit_ = self.execute_line(text, interactive)
                if interactive and out.endswith("\n"):
                    out = out[:-1]  # the prompt "\n> " takes the place of the empty line (HAProxy)
                writer.write(out.encode())
                await writer.drain()
                if quit_ or not interactive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def execute_line(self, text: str, interactive: bool) -> tuple[str, bool, bool]:
        """Run a line of ``;``-separated commands; (output, interactive, quit)."""
        out = []
        quit_ = False
        for command in (c.strip() for c in text.split(";")):
            if not command:
                continue
            if command == "prompt":
                interactive = not interactive
                continue
            if command == "quit":
                quit_ = True
                break
            try:
                result = self.execute(command)
            except Exception as exc:
                log.exception("runtime API command %r failed", command)
                result = f"Internal error: {exc}\n"
            out.append(result if result.endswith("\n") or not result else result + "\n")
            out.append("\n")  # HAProxy ends every answer with an empty line
        return "".join(out), interactive, quit_

    # -- commands ------------------------------------------------------------------------------
    def execute(self, command: str) -> str:
        words = command.split()
        master = self.master
        if not words:
            return ""
        if words == ["help"]:
            return HELP
        if words[:2] == ["show", "info"]:
            return self.show_info()
        if words[:2] == ["show", "stat"]:
            return self.show_stat()
        if words[:3] == ["show", "servers", "state"]:
            return self.show_servers_state(words[3] if len(words) > 3 else None)
        target = None
        if words[0] in ("enable", "disable", "get", "set") and len(words) >= 3:
            target = words[2]
        elif words[:3] == ["shutdown", "sessions", "server"] and len(words) == 4:
            target = words[3]
        if target is None:
            return f"Unknown command: '{command}'\n" + HELP
        be, _, srv = target.partition("/")
        if not srv:
            return "Require 'backend/server'.\n"
        if be not in master.runtime.backends:
            return "No such backend.\n"
        s = master.runtime.backends[be].by_name.get(srv)
        if s is None:
            return "No such server.\n"
        from ..master import ControlError

        try:
            if words[0] == "get" and words[1] == "weight":
                return f"{s.uweight} (initial {s.config_weight})\n"  # the admin weight (HAProxy)
            if words[0] == "set" and words[1] == "weight" and len(words) == 4:
                master.set_server(be, srv, weight=words[3])
                return ""
            if words[0] == "set" and words[1] == "server" and len(words) == 5:
                what, value = words[3], words[4]
                if what == "state":
                    if value not in (READY, DRAIN, MAINT):
                        return "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n"
                    master.set_server(be, srv, state=value)
                    return ""
                if what == "weight":
                    master.set_server(be, srv, weight=value)
                    return ""
                if what == "health":
                    if value not in ("up", "stopping", "down"):
                        return "'set server <srv> health' expects 'up', 'stopping', or 'down'.\n"
                    master.set_server(be, srv, health=UP if value == "up" else DOWN)
                    return ""
                return "'set server <srv>' only supports 'state', 'weight' and 'health'.\n"
            if words[1] == "server" and words[0] in ("enable", "disable"):
                master.set_server(be, srv, state=READY if words[0] == "enable" else MAINT)
                return ""
            if words[1] == "health" and words[0] in ("enable", "disable"):
                if not s.check:
                    return (f"Health checks are not configured on this server, cannot "
                            f"{words[0]}.\n")
                master.set_check_enabled(be, srv, words[0] == "enable")
                return ""
            if words[1] == "agent" and words[0] in ("enable", "disable"):
                return f"Agent was not configured on this server, cannot {words[0]}.\n"
            if words[0] == "shutdown":
                master.shutdown_sessions(be, srv)
                return ""
        except ControlError as exc:
            return f"{exc}\n"
        return f"Unknown command: '{command}'\n" + HELP

    def show_info(self) -> str:
        master = self.master
        master.refresh_counters()
        uptime = int(time.time() - master.started)
        d, rem = divmod(uptime, 86400)
        h, rem = divmod(rem, 3600)
        m, sec = divmod(rem, 60)
        lines = [
            "Name: fleetproxy",
            f"Version: {HAPROXY_COMPAT_VERSION}-fleetproxy-{__version__}",
            f"Fleetproxy_version: {__version__}",
            f"Pid: {os.getpid()}",
            f"Uptime: {d}d {h}h{m:02d}m{sec:02d}s",
            f"Uptime_sec: {uptime}",
            f"Nbthread: {master.nworkers}",
            f"Nbproc: {master.nworkers}",
            f"Maxconn: {master.cfg.global_.maxconn}",
            f"CurrConns: {master.process_conns()}",
            f"CumConns: {sum(f.total_conns for f in master.runtime.frontends.values())}",
            f"CumReq: {sum(f.requests for f in master.runtime.frontends.values())}",
            f"Reloads: {master.reloads}",
        ]
        return "\n".join(lines) + "\n"

    def stat_rows(self) -> list[dict[str, Any]]:
        master = self.master
        master.refresh_counters()
        now = master.loop.time()
        rows: list[dict[str, Any]] = []
        for iid, fe in enumerate(master.runtime.frontends.values(), 1):
            r = fe.responses
            rows.append({
                "pxname": fe.name, "svname": "FRONTEND", "scur": fe.conns, "smax": fe.max_conns,
                "slim": fe.maxconn or master.cfg.global_.maxconn, "stot": fe.total_conns,
                "bin": fe.bytes_in, "bout": fe.bytes_out, "ereq": fe.bad_requests, "status": "OPEN",
                "pid": 1, "iid": iid, "sid": 0, "type": 0,
                "hrsp_1xx": r[1], "hrsp_2xx": r[2], "hrsp_3xx": r[3], "hrsp_4xx": r[4], "hrsp_5xx": r[5],
                "hrsp_other": r[0], "req_tot": fe.requests, "mode": fe.mode, "conn_tot": fe.total_conns,
            })
        fe_count = len(rows)
        for biid, be in enumerate(master.runtime.backends.values(), fe_count + 1):
            for sid, s in enumerate(be.servers, 1):
                r = s.responses
                check = ""
                code: Any = ""
                if s.check and s.check_enabled:
                    check = s.check_status
                    if s.check_desc.startswith("status "):
                        code = s.check_desc.split()[1]
                rows.append({
                    "pxname": be.name, "svname": s.name, "qcur": s.queue, "qmax": 0, "scur": s.active,
                    "smax": s.max_active, "slim": s.cfg.maxconn or "", "stot": s.total,
                    "bin": s.bytes_in, "bout": s.bytes_out, "econ": s.conn_errors, "eresp": s.resp_errors,
                    "wretr": s.retries, "wredis": s.redispatches,
                    "status": haproxy_status(s, master.health), "weight": s.weight,
                    "act": 0 if s.backup else 1, "bck": 1 if s.backup else 0,
                    "chkfail": s.check_fails if s.check else "", "chkdown": "",
                    "lastchg": int(now - s.last_change), "downtime": int(downtime(s, now)) if s.check else "",
                    "pid": 1, "iid": biid, "sid": sid, "lbtot": s.total, "type": 2,
                    "check_status": check, "check_code": code,
                    "check_duration": s.check_duration if check and s.check_duration >= 0 else "",
                    "hrsp_1xx": r[1], "hrsp_2xx": r[2], "hrsp_3xx": r[3], "hrsp_4xx": r[4],
                    "hrsp_5xx": r[5], "hrsp_other": r[0], "check_desc": s.check_desc if check else "",
                    "check_rise": s.cfg.rise if s.check else "", "check_fall": s.cfg.fall if s.check else "",
                    "addr": f"{s.host}:{s.port}", "cookie": s.cookie if be.cookie is not None else "",
                    "mode": be.mode,
                })
            r = be.responses
            rows.append({
                "pxname": be.name, "svname": "BACKEND", "qcur": be.queued, "scur": be.active,
                "stot": be.total, "bin": be.bytes_in, "bout": be.bytes_out,
                "status": "UP" if be.usable else "DOWN",
                "weight": sum(s.weight for s in be.usable),
                "act": sum(1 for s in be.usable if not s.backup),
                "bck": sum(1 for s in be.usable if s.backup),
                "pid": 1, "iid": biid, "sid": 0, "lbtot": be.total, "type": 1,
                "hrsp_1xx": r[1], "hrsp_2xx": r[2], "hrsp_3xx": r[3], "hrsp_4xx": r[4], "hrsp_5xx": r[5],
                "hrsp_other": r[0], "mode": be.mode, "algo": be.algorithm,
            })
        return rows

    def show_stat(self) -> str:
        lines = ["# " + ",".join(STAT_FIELDS)]
        for row in self.stat_rows():
            lines.append(",".join(str(row.get(f, "")) for f in STAT_FIELDS))
        return "\n".join(lines) + "\n"

    def show_servers_state(self, backend: str | None) -> str:
        master = self.master
        now = master.loop.time()
        rt = master.runtime
        if backend is not None and backend not in rt.backends:
            return "Can't find backend.\n"
        lines = [
            "1",
            "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
            "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
            "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
            "srv_fqdn srv_port srvrecord",
        ]
        for be_id, be in enumerate(rt.backends.values(), len(rt.frontends) + 1):
            if backend is not None and be.name != backend:
                continue
            for srv_id, s in enumerate(be.servers, 1):
                op = 2 if s.health == UP else 0
                admin = 0x01 if s.state == MAINT else (0x08 if s.state == DRAIN else 0)
                check_state = (0x01 | 0x02) if s.check and s.check_enabled else 0
                health = (s.cfg.rise + s.cfg.fall - 1) if s.health == UP else 0  # type: ignore[operator]
                lines.append(
                    f"{be_id} {be.name} {srv_id} {s.name} {s.host} {op} {admin} {s.uweight} "
                    f"{s.config_weight} {int(now - s.last_change)} 0 0 {health} {check_state} 0 0 0 - "
                    f"{s.port} -"
                )
        return "\n".join(lines) + "\n"
