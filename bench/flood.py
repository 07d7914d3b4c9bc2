#!/usr/bin/env python3
"""bench/flood.py: the load generator of bench/attack.sh and bench/shield_memory.sh.

Python 3 standard library only (asyncio protocols, no pip packages). Every client
connection is bound to its own loopback source address (any 127.x.y.z works on Linux),
so one process plays thousands of distinct clients.

  flood.py attack --target HOST:PORT --out FILE.json [options]
      50 legitimate clients (127.30.0.x) at 2 requests/s each on keep-alive connections,
      waiting for each answer (closed loop, latency recorded per request), running the
      whole time in a forked process of their own (so the flood's work never delays them);
      a flood from 1,000 sources (127.20.x.y) at 5.5 requests/s each, open
      model (fired on schedule whether or not earlier requests were answered; a source
      opens another connection when all of its connections are busy, up to --flood-conns),
      from --flood-start for --flood-duration seconds, on raw non-blocking sockets driven by
      the event loop's selector (no task per request). Samples CPU and RSS of --pids.
      Writes every number the table needs to FILE.json.

  flood.py table A.json B.json ...
      The side-by-side markdown table of attack results.

  flood.py memory --target HOST:PORT --count N [--concurrency C] [--time-limit S]
      N distinct source addresses from 127.100.0.1 upwards, each: connect, one request
      (Connection: close), read the answer, close (RST: no TIME_WAIT pile-up).
      Prints progress; writes a JSON summary to --out.
"""

import argparse
import asyncio
import errno
import gc
import ipaddress
import json
import os
import socket
import struct
import sys
import time

# Outcomes of a request (a status code >= 100, or one of these).
REFUSED = -1   # connect refused (ECONNREFUSED)
CLOSED = -2    # the connection was closed or reset before a complete answer
TIMEOUT = -3   # no complete answer within the request timeout
ERROR = -4     # another socket error (e.g. EADDRNOTAVAIL)
SKIPPED = -5   # flood only: all of the source's connections busy, request not sent
OUTCOME_NAMES = {REFUSED: "refused", CLOSED: "closed/reset", TIMEOUT: "timeout",
                 ERROR: "error", SKIPPED: "skipped"}
BLOCKED = {403, 429, REFUSED, CLOSED}


def request_bytes(close=False):
    return (b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: levee-bench\r\n"
            + (b"Connection: close\r\n" if close else b"") + b"\r\n")


class Conn(asyncio.Protocol):
    """One HTTP/1.1 client connection: one request at a time, answer parsed enough to
    find its end (Content-Length, chunked, or close-delimited)."""

    __slots__ = ("transport", "buf", "cb", "alive", "timer", "keep", "status",
                 "need", "chunked", "hdr_done", "body_start", "source")

    def __init__(self, source=None):
        self.transport = None
        self.buf = bytearray()
        self.cb = None
        self.alive = True
        self.timer = None
        self.source = source
        self._reset()

    def _reset(self):
        self.status = 0
        self.need = -1
        self.chunked = False
        self.hdr_done = False
        self.keep = True
        self.body_start = 0

    def connection_made(self, transport):
        self.transport = transport

    def send(self, data, cb, timeout, loop):
        """Sends a request; cb(outcome, conn) runs exactly once."""
        self.cb = cb
        self._reset()
        self.buf.clear()
        self.timer = loop.call_later(timeout, self._timeout)
        self.transport.write(data)

    def _finish(self, outcome):
        cb, self.cb = self.cb, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if cb is not None:
            cb(outcome, self)

    def _timeout(self):
        self.timer = None
        self.alive = False
        if self.transport is not None:
            self.transport.abort()
        self._finish(TIMEOUT)

    def data_received(self, data):
        self.buf += data
        if self.cb is None:
            return
        self.data_received_parse()

    def data_received_parse(self):
        buf = self.buf
        if not self.hdr_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            try:
                self.status = int(head[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                self._abort()
                self._finish(CLOSED)
                return
            self.hdr_done = True
            self.body_start = end + 4
            for line in head[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    self.need = int(v.strip())
                elif k == "transfer-encoding" and "chunked" in v.lower():
                    self.chunked = True
                elif k == "connection" and "close" in v.lower():
                    self.keep = False
            if self.status in (204, 304) or (100 <= self.status < 200):
                self.need = 0
        body = len(buf) - self.body_start
        if self.chunked:
            if not self._chunked_done():
                return
        elif self.need >= 0:
            if body < self.need:
                return
        else:
            return  # close-delimited: ends in connection_lost
        if not self.keep:
            self._abort()
        self._finish(self.status)

    def _chunked_done(self):
        buf, i = self.buf, self.body_start
        while True:
            nl = buf.find(b"\r\n", i)
            if nl < 0:
                return False
            try:
                size = int(bytes(buf[i:nl]).split(b";")[0], 16)
            except ValueError:
                return True
            i = nl + 2
            if size == 0:
                return buf.find(b"\r\n", i) >= 0
            i += size + 2
            if i > len(buf):
                return False

    def _abort(self):
        self.alive = False
        self.transport.abort()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.alive = False
        if self.cb is not None:
            if self.hdr_done and not self.chunked and self.need < 0:
                self._finish(self.status)  # close-delimited body complete
            else:
                self._finish(CLOSED)


class RawConn:
    """A bare non-blocking socket driven by the event loop's add_reader/add_writer
    callbacks (no tasks, futures or transports): the cheap path for thousands of flood
    connections per second. One request at a time; done(outcome, conn) runs exactly once
    per request; the request deadline is enforced by a sweeper (see Pending)."""

    __slots__ = ("loop", "sock", "fd", "buf", "cb", "alive", "connected", "keep", "status",
                 "need", "chunked", "hdr_done", "body_start", "deadline", "req", "pending")

    def __init__(self, loop, src, addr, pending):
        self.loop = loop
        self.buf = bytearray()
        self.cb = None
        self.alive = True
        self.connected = False
        self.req = None
        self.deadline = 0.0
        self.pending = pending
        self._reset()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock = s
        self.fd = s.fileno()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((src, 0))
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.alive = False
            raise OSError(err, os.strerror(err))
        loop.add_writer(self.fd, self._on_connect)

    _reset = Conn._reset
    _chunked_done = Conn._chunked_done

    def _abort(self):
        self.close()

    def send(self, req, cb, timeout):
        self.cb = cb
        self.deadline = self.loop.time() + timeout
        self.pending.add(self)
        if self.connected:
            self._write(req)
        else:
            self.req = req

    def _write(self, req):
        self._reset()
        self.buf.clear()
        try:
            self.sock.send(req)
        except OSError as e:
            self._fail(CLOSED if isinstance(e, ConnectionError) else ERROR)

    def _on_connect(self):
        self.loop.remove_writer(self.fd)
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(REFUSED if err == errno.ECONNREFUSED else
                       CLOSED if err in (errno.ECONNRESET, errno.EPIPE) else
                       TIMEOUT if err == errno.ETIMEDOUT else ERROR)
            return
        self.connected = True
        self.loop.add_reader(self.fd, self._on_read)
        if self.req is not None:
            req, self.req = self.req, None
            self._write(req)

    def close(self, abortive=False):
        if self.sock is None:
            return
        self.alive = False
        try:
            if self.connected:
                self.loop.remove_reader(self.fd)
            else:
                self.loop.remove_writer(self.fd)
        except (ValueError, OSError):
            pass
        if abortive:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            except OSError:
                pass
        self.sock.close()
        self.sock = None

    def _finish(self, outcome):
        cb, self.cb = self.cb, None
        self.pending.discard(self)
        if cb is not None:
            cb(outcome, self)

    def _fail(self, outcome):
        self.close()
        self._finish(outcome)

    def expire(self):
        self.close(abortive=True)
        self._finish(TIMEOUT)

    def _on_read(self):
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(CLOSED if isinstance(e, ConnectionError) else ERROR)
            return
        if not data:
            if self.cb is not None and self.hdr_done and not self.chunked and self.need < 0:
                st = self.status
                self.close()
                self._finish(st)
            else:
                self._fail(CLOSED)
            return
        if self.cb is None:
            return
        self.buf += data
        Conn.data_received_parse(self)


class Pending(set):
    """Requests in progress; a sweeper times out the ones past their deadline."""

    async def sweep(self, loop, stop):
        while not stop.is_set():
            now = loop.time()
            for c in [c for c in self if c.deadline <= now]:
                c.expire()
            await asyncio.sleep(0.1)


LINGER0 = struct.pack("ii", 1, 0)


def classify_exc(e):
    if isinstance(e, ConnectionRefusedError):
        return REFUSED
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return CLOSED
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return TIMEOUT
    return ERROR


async def connect(loop, host, port, src, proto_factory, timeout):
    """A connection bound to source address src (port chosen by the kernel)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((src, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        _, proto = await loop.create_connection(proto_factory, sock=sock)
        return proto
    except BaseException:
        sock.close()
        raise


# --------------------------------------------------------------- resource sampling

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def proc_ticks_rss(pid):
    """(utime+stime ticks, VmRSS kB) of one process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        ticks = int(rest[11]) + int(rest[12])
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        return ticks, rss
    except (OSError, IndexError, ValueError):
        return None


def proc_runq_wait_ns(pid):
    """Time the process's threads spent runnable but waiting for a CPU (schedstat), in ns."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        pass
    return total


def machine_busy_total():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v)
    return total - v[3] - v[4], total


class Sampler:
    """Every 0.5 s: CPU ticks and RSS summed over the proxy's processes (children
    included, e.g. nginx's worker), and the ticks of every process of the benchmark,
    to tell how much CPU other processes took."""

    def __init__(self, proxy_pids, own_pids):
        self.proxy_pids = proxy_pids
        self.own_pids = own_pids
        self.samples = []  # (t, proxy_ticks, proxy_rss_kb, own_ticks, machine_busy, machine_total)
        self.gone = set()

    def expand(self, pids):
        out = []
        for p in pids:
            out.append(p)
            out += self.expand(proc_children(p))
        return out

    def sample(self, t):
        pt = pr = ot = rq = 0
        for p in self.expand(self.proxy_pids):
            r = proc_ticks_rss(p)
            if r is None:
                continue
            pt += r[0]
            pr += r[1]
            rq += proc_runq_wait_ns(p)
        for p in self.expand(self.own_pids):
            r = proc_ticks_rss(p)
            if r is not None:
                ot += r[0]
        mb, mt = machine_busy_total()
        self.samples.append((t, pt, pr, ot, mb, mt, rq))

    async def run(self, t0, stop):
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            self.sample(loop.time() - t0)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        self.sample(loop.time() - t0)


# --------------------------------------------------------------- attack mode

async def attack(a, t0, role, legit_pid=0):
    """role "legit": the legitimate clients only (a process of their own, so that the
    flood's work never delays their requests or their clocks); returns their results.
    role "flood": the flood and the resource sampler. t0: time.monotonic() of the start,
    the same clock in both processes (CLOCK_MONOTONIC)."""
    loop = asyncio.get_running_loop()
    host, port = a.target.rsplit(":", 1)
    port = int(port)
    req = request_bytes()
    flood_start = t0 + a.flood_start
    flood_end = flood_start + a.flood_duration
    end = t0 + a.total

    # ---- legitimate clients: closed loop, 1/rate between request starts (or later)
    legit = []  # (t_start_rel, latency_s, outcome)

    async def legit_client(i):
        src = f"127.30.{i // 250}.{i % 250 + 1}"
        conn = None
        nxt = t0 + (i / a.legit) / a.legit_rate  # spread the starts over one period
        while True:
            now = loop.time()
            if nxt >= end:
                return
            if nxt > now:
                await asyncio.sleep(nxt - now)
            start = loop.time()
            deadline = start + a.timeout
            outcome = None
            try:
                if conn is None or not conn.alive:
                    conn = await connect(loop, host, port, src, Conn, a.timeout)
                fut = loop.create_future()
                conn.send(req, lambda o, c: fut.done() or fut.set_result(o),
                          max(0.001, deadline - loop.time()), loop)
                outcome = await fut
            except Exception as e:  # noqa: BLE001 - every failure is an outcome
                outcome = classify_exc(e)
            lat = loop.time() - start
            if outcome != 200 and conn is not None and conn.transport is not None:
                if not conn.alive or outcome < 0:
                    conn.transport.abort()
                    conn = None
            legit.append((start - t0, lat, outcome))
            nxt = max(nxt + 1.0 / a.legit_rate, loop.time())

    # ---- flood sources: open model, raw sockets
    n_src = a.flood_sources
    period = 1.0 / a.flood_rate
    addr = (host, port)
    sources = [f"127.20.{i // 250}.{i % 250 + 1}" for i in range(n_src)]
    idle = [[] for _ in range(n_src)]
    nconns = [0] * n_src
    f_time = []     # send time (s since flood start), by request index
    f_out = []      # outcome, by request index
    lag = []        # scheduling lateness (s), sampled
    pending = Pending()
    fired = 0

    def make_cb(idx, si):
        def cb(outcome, conn):
            f_out[idx] = outcome
            if conn.alive and outcome >= 100 and conn.keep:
                idle[si].append(conn)
            else:
                conn.close(abortive=True)
                nconns[si] -= 1
        return cb

    def fire(si, now):
        idx = len(f_out)
        f_time.append(now - flood_start)
        f_out.append(None)
        q = idle[si]
        while q:
            c = q.pop()
            if c.alive:
                c.send(req, make_cb(idx, si), a.timeout)
                return
            nconns[si] -= 1
        if nconns[si] >= a.flood_conns:
            f_out[idx] = SKIPPED
            return
        try:
            c = RawConn(loop, sources[si], addr, pending)
        except OSError as e:
            f_out[idx] = REFUSED if e.errno == errno.ECONNREFUSED else ERROR
            return
        nconns[si] += 1
        c.send(req, make_cb(idx, si), a.timeout)

    async def flood():
        nonlocal fired
        if n_src == 0:
            return
        await asyncio.sleep(max(0.0, flood_start - loop.time()))
        # source si fires at flood_start + si/n_src*period + k*period: sources spread
        # evenly over one period, always in the same cyclic order.
        k = 0
        si = 0
        while True:
            now = loop.time()
            if now >= flood_end:
                break
            while True:
                due = flood_start + (k + si / n_src) * period
                if due > now or due >= flood_end:
                    break
                if fired % 97 == 0:
                    lag.append(now - due)
                fire(si, now)
                fired += 1
                si += 1
                if si == n_src:
                    si = 0
                    k += 1
            await asyncio.sleep(0.002)

    if role == "legit":
        await asyncio.gather(*[loop.create_task(legit_client(i)) for i in range(a.legit)])
        return legit
    stop = asyncio.Event()
    sampler = Sampler(a.pids, a.own_pids + [os.getpid(), legit_pid])
    samp_task = loop.create_task(sampler.run(t0, stop))
    sweeper = loop.create_task(pending.sweep(loop, stop))
    await loop.create_task(flood())
    # Let the last flood requests finish (answer or time out), and the run end.
    wait_until = loop.time() + a.timeout + 1
    while any(o is None for o in f_out[-5000:]) and loop.time() < wait_until:
        await asyncio.sleep(0.1)
    if loop.time() < end:
        await asyncio.sleep(end - loop.time())
    stop.set()
    await samp_task
    await sweeper
    for q in idle:
        for c in q:
            c.close(abortive=True)

    return f_time, f_out, lag, sampler


def attack_main(a):
    """Forks the legitimate clients into a process of their own, runs the flood here."""
    gc.disable()  # no collector pauses in the middle of the run
    t0 = time.monotonic() + 0.3
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        try:
            legit = asyncio.run(attack(a, t0, "legit"))
            data = json.dumps(legit).encode()
            with os.fdopen(wfd, "wb") as w:
                w.write(data)
        finally:
            os._exit(0)
    os.close(wfd)
    f_time, f_out, lag, sampler = asyncio.run(attack(a, t0, "flood", pid))
    with os.fdopen(rfd, "rb") as r:
        legit = [tuple(x) for x in json.loads(r.read() or b"[]")]
    os.waitpid(pid, 0)
    report(a, legit, f_time, f_out, lag, sampler)


def report(a, legit, f_time, f_out, lag, sampler):
    n_src = a.flood_sources
    res = {"label": a.label, "target": a.target, "params": {
        "legit": a.legit, "legit_rate": a.legit_rate, "flood_sources": n_src,
        "flood_rate": a.flood_rate, "flood_start": a.flood_start,
        "flood_duration": a.flood_duration, "total": a.total, "timeout": a.timeout,
        "flood_conns": a.flood_conns}}
    lat_all = sorted(x[1] for x in legit)
    ok = sum(1 for x in legit if x[2] == 200)

    def pct(v, p):
        if not v:
            return None
        return v[min(len(v) - 1, int(p / 100.0 * len(v)))]
    during = [x for x in legit if a.flood_start <= x[0] < a.flood_start + a.flood_duration]
    lat_ok = sorted(x[1] for x in legit if x[2] == 200)
    outcomes = {}
    for x in legit:
        k = OUTCOME_NAMES.get(x[2], str(x[2]))
        outcomes[k] = outcomes.get(k, 0) + 1
    res["legit"] = {
        "total": len(legit), "ok": ok,
        "success_rate": ok / len(legit) if legit else None,
        "during_flood_total": len(during),
        "during_flood_ok": sum(1 for x in during if x[2] == 200),
        "p50_ms": pct(lat_all, 50) * 1000 if lat_all else None,
        "p99_ms": pct(lat_all, 99) * 1000 if lat_all else None,
        "max_ms": lat_all[-1] * 1000 if lat_all else None,
        "ok_p99_ms": pct(lat_ok, 99) * 1000 if lat_ok else None,
        # p99 when a failed request counts as never served (infinitely slow): None (infinite)
        # when more than 1% failed.
        "p99_failures_inf_ms": (pct(sorted([x[1] for x in legit if x[2] == 200]
                                           + [float("inf")] * (len(legit) - ok)), 99) * 1000)
                               if legit else None,
        "during_flood_p99_ms": (pct(sorted(x[1] for x in during), 99) * 1000) if during else None,
        "outcomes": outcomes,
        # per second of the run: [requests, failures, max latency ms]
        "by_second": [[sum(1 for x in legit if int(x[0]) == sec),
                       sum(1 for x in legit if int(x[0]) == sec and x[2] != 200),
                       round(max([x[1] for x in legit if int(x[0]) == sec] or [0]) * 1000)]
                      for sec in range(int(a.total) + 1)],
    }
    fo = {}
    for o in f_out:
        k = "pending" if o is None else OUTCOME_NAMES.get(o, str(o))
        fo[k] = fo.get(k, 0) + 1
    # Time until blocked: 0.5 s bins of flood send time; the end of the first bin from
    # which every bin until the flood's end has >= 95% of its requests blocked.
    bin_s = 0.5
    nb = int(round(a.flood_duration / bin_s))
    tot = [0] * nb
    blk = [0] * nb
    for t, o in zip(f_time, f_out):
        b = int(t / bin_s)
        if 0 <= b < nb:
            tot[b] += 1
            if o in BLOCKED:
                blk[b] += 1
    frac = [blk[i] / tot[i] if tot[i] else 1.0 for i in range(nb)]
    detail = [{} for _ in range(nb)]
    for t, o in zip(f_time, f_out):
        b = int(t / bin_s)
        if 0 <= b < nb:
            k = "pending" if o is None else OUTCOME_NAMES.get(o, str(o))
            detail[b][k] = detail[b].get(k, 0) + 1
    t_block = None
    for i in range(nb - 1, -1, -1):
        if frac[i] >= 0.95:
            t_block = (i + 1) * bin_s
        else:
            break
    if t_block is not None and t_block > a.flood_duration - 2 * bin_s and nb > 4:
        # only the last bin(s) qualify: not "blocked", just the tail of the flood
        t_block = t_block if all(f >= 0.95 for f in frac) else None
    lag.sort()
    res["flood"] = {
        "sent": len(f_out),
        "offered_rps": len(f_out) / a.flood_duration,
        "target_rps": n_src * a.flood_rate,
        "sched_lag_p99_ms": pct(lag, 99) * 1000 if lag else None,
        "sched_lag_max_ms": lag[-1] * 1000 if lag else None,
        "outcomes": fo,
        "blocked_fraction": sum(blk) / max(1, sum(tot)),
        "served_2xx": sum(1 for o in f_out if o is not None and 200 <= o < 300),
        "blocked_by_bin": [round(f, 3) for f in frac],
        "outcomes_by_bin": detail,
        "time_until_blocked_s": t_block,
    }
    # ---- resources
    s = sampler.samples
    cpu = {}
    if len(s) >= 2:
        def window(lo, hi):
            w = [x for x in s if lo <= x[0] <= hi]
            return w if len(w) >= 2 else None
        fw = window(a.flood_start, a.flood_start + a.flood_duration)
        rw = s
        def pcpu(w):
            dt = w[-1][0] - w[0][0]
            return (w[-1][1] - w[0][1]) / CLK_TCK / dt * 100 if dt > 0 else None
        peak = 0.0
        for i in range(2, len(s)):
            dt = s[i][0] - s[i - 2][0]
            if dt > 0:
                peak = max(peak, (s[i][1] - s[i - 2][1]) / CLK_TCK / dt * 100)
        mb = rw[-1][4] - rw[0][4]
        mt = rw[-1][5] - rw[0][5]
        own = (rw[-1][3] - rw[0][3]) + (rw[-1][1] - rw[0][1])
        before = [x[2] for x in s if x[0] < a.flood_start]
        cpu = {
            "proxy_cpu_flood_pct": pcpu(fw) if fw else None,
            "proxy_cpu_peak_1s_pct": peak,
            "proxy_cpu_seconds": (s[-1][1] - s[0][1]) / CLK_TCK,
            "proxy_rss_before_kb": max(before) if before else s[0][2],
            "proxy_rss_peak_kb": max(x[2] for x in s),
            "proxy_rss_end_kb": s[-1][2],
            "machine_busy_pct": mb / mt * 100 if mt else None,
            "other_processes_pct": max(0.0, (mb - own) / mt * 100) if mt else None,
            # time the proxy's threads were ready to run but waiting for a CPU, in % of the
            # flood's wall time: high values mean the proxy was starved by other processes
            "proxy_runq_wait_flood_pct": ((fw[-1][6] - fw[0][6]) / 1e9 / (fw[-1][0] - fw[0][0]) * 100)
                                         if fw and fw[-1][0] > fw[0][0] else None,
        }
    # [t, proxy ticks, proxy RSS kB, benchmark ticks, machine busy, machine total,
    #  proxy run-queue wait ms]
    cpu["samples"] = [[round(x[0], 2), x[1], x[2], x[3], x[4], x[5], x[6] // 1_000_000] for x in s]
    res["resources"] = cpu
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    L, F = res["legit"], res["flood"]
    print(f"[flood.py] {a.label}: legit {L['ok']}/{L['total']} ok, p50 {L['p50_ms']:.1f} ms, "
          f"p99 {L['p99_ms']:.1f} ms; flood offered {F['offered_rps']:.0f}/{F['target_rps']:.0f} req/s, "
          f"blocked {F['blocked_fraction'] * 100:.1f}%, time until blocked {F['time_until_blocked_s']}; "
          f"outcomes {F['outcomes']}", file=sys.stderr)


# --------------------------------------------------------------- table

def fmt(v, spec, unit=""):
    return "n/a" if v is None else format(v, spec) + unit


def table(files):
    rs = [json.load(open(f)) for f in files]
    rows = [
        ("legit success rate", lambda r: fmt(r["legit"]["success_rate"] * 100, ".2f", "%")
         + f" ({r['legit']['ok']}/{r['legit']['total']})"),
        ("legit success during the flood", lambda r: fmt(
            r["legit"]["during_flood_ok"] / max(1, r["legit"]["during_flood_total"]) * 100, ".2f", "%")),
        ("legit p50 (all requests)", lambda r: fmt(r["legit"]["p50_ms"], ".1f", " ms")),
        ("legit p99 (all requests)", lambda r: fmt(r["legit"]["p99_ms"], ".1f", " ms")),
        ("legit p99 (successful only)", lambda r: fmt(r["legit"]["ok_p99_ms"], ".1f", " ms")),
        ("legit p99 (a failure counts as never served)", lambda r: "∞ (over 1% failed)" if r["legit"]["p99_failures_inf_ms"] in (None, float("inf")) else fmt(r["legit"]["p99_failures_inf_ms"], ".1f", " ms")),
        ("legit failures", lambda r: ", ".join(f"{k}: {v}" for k, v in sorted(r["legit"]["outcomes"].items()) if k != "200") or "none"),
        ("backend max in flight (cap 8)", lambda r: "/".join(str(b.get("max_in_flight", "?")) for b in r.get("backends", []))),
        ("backend crashes", lambda r: "/".join(str(b.get("crashes", "?")) for b in r.get("backends", []))),
        ("time until the flood was blocked", lambda r: "never" if r["flood"]["time_until_blocked_s"] is None else fmt(r["flood"]["time_until_blocked_s"], ".1f", " s")),
        ("flood requests blocked (403/429/refused/reset)", lambda r: fmt(r["flood"]["blocked_fraction"] * 100, ".1f", "%")),
        ("flood requests served 2xx", lambda r: str(r["flood"]["served_2xx"])),
        ("flood outcomes", lambda r: ", ".join(f"{k}: {v}" for k, v in sorted(r["flood"]["outcomes"].items()))),
        ("flood offered (achieved/target)", lambda r: f"{r['flood']['offered_rps']:.0f}/{r['flood']['target_rps']:.0f} req/s, lag p99 {fmt(r['flood']['sched_lag_p99_ms'], '.0f', ' ms')}"),
        ("proxy CPU during the flood (1 core = 100%)", lambda r: fmt(r["resources"].get("proxy_cpu_flood_pct"), ".0f", "%")
         + f" (peak 1s {fmt(r['resources'].get('proxy_cpu_peak_1s_pct'), '.0f', '%')})"),
        ("proxy CPU time, whole run", lambda r: fmt(r["resources"].get("proxy_cpu_seconds"), ".1f", " s")),
        ("proxy RSS before / peak", lambda r: fmt(r["resources"].get("proxy_rss_before_kb", 0) / 1024, ".1f", " MB")
         + " / " + fmt(r["resources"].get("proxy_rss_peak_kb", 0) / 1024, ".1f", " MB")),
        ("other processes (of all CPUs)", lambda r: fmt(r["resources"].get("other_processes_pct"), ".0f", "%")),
        ("proxy waiting for a CPU during the flood (schedstat)", lambda r: fmt(r["resources"].get("proxy_runq_wait_flood_pct"), ".0f", "% of the time")),
    ]
    print("| | " + " | ".join(r["label"] for r in rs) + " |")
    print("|---|" + "---|" * len(rs))
    for name, f in rows:
        cells = []
        for r in rs:
            try:
                cells.append(f(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")


# --------------------------------------------------------------- memory mode

async def memory(a):
    loop = asyncio.get_running_loop()
    host, port = a.target.rsplit(":", 1)
    addr = (host, int(port))
    req = request_bytes(close=True)
    base = int(ipaddress.IPv4Address(a.first))
    counts = {}
    done = 0
    nxt = 0
    t0 = loop.time()
    deadline = t0 + a.time_limit
    pending = Pending()
    stop = asyncio.Event()
    finished = loop.create_future()

    def start_one():
        nonlocal nxt
        while nxt < a.count and loop.time() < deadline:
            i = nxt
            nxt += 1
            try:
                c = RawConn(loop, str(ipaddress.IPv4Address(base + i)), addr, pending)
            except OSError as e:
                on_done(REFUSED if e.errno == errno.ECONNREFUSED else ERROR, None, restart=False)
                continue
            c.send(req, on_done, a.timeout)
            return True
        return False

    inflight = 0

    def on_done(outcome, conn, restart=True):
        nonlocal done, inflight
        if conn is not None:
            conn.close(abortive=True)  # RST: no TIME_WAIT pile-up on either side
        k = OUTCOME_NAMES.get(outcome, str(outcome))
        counts[k] = counts.get(k, 0) + 1
        done += 1
        if restart:
            inflight -= 1
            if start_one():
                inflight += 1
            elif inflight == 0 and not finished.done():
                finished.set_result(None)

    async def progress():
        last = 0
        while True:
            await asyncio.sleep(5)
            el = loop.time() - t0
            print(f"[flood.py] {done} clients after {el:.0f}s ({(done - last) / 5:.0f}/s now), "
                  f"outcomes {counts}", file=sys.stderr, flush=True)
            last = done

    p = loop.create_task(progress())
    sw = loop.create_task(pending.sweep(loop, stop))
    for _ in range(a.concurrency):
        if start_one():
            inflight += 1
    if inflight:
        await finished
    p.cancel()
    stop.set()
    await sw
    el = loop.time() - t0
    res = {"sent": done, "seconds": el, "rate": done / el if el else 0, "outcomes": counts,
           "first": a.first, "last": str(ipaddress.IPv4Address(base + max(0, nxt - 1))),
           "time_limited": nxt < a.count}
    print(f"[flood.py] done: {done} distinct clients in {el:.0f}s ({res['rate']:.0f}/s), "
          f"outcomes {counts}", file=sys.stderr)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    at = sub.add_parser("attack")
    at.add_argument("--target", required=True)
    at.add_argument("--out", required=True)
    at.add_argument("--label", default="proxy")
    at.add_argument("--legit", type=int, default=50)
    at.add_argument("--legit-rate", type=float, default=2.0)
    at.add_argument("--flood-sources", type=int, default=1000)
    at.add_argument("--flood-rate", type=float, default=5.5)
    at.add_argument("--flood-start", type=float, default=4.0)
    at.add_argument("--flood-duration", type=float, default=20.0)
    at.add_argument("--flood-conns", type=int, default=8,
                    help="connections per flood source at most (busy ones: the request is skipped)")
    at.add_argument("--total", type=float, default=30.0)
    at.add_argument("--timeout", type=float, default=5.0)
    at.add_argument("--pids", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    at.add_argument("--own-pids", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    tb = sub.add_parser("table")
    tb.add_argument("files", nargs="+")
    me = sub.add_parser("memory")
    me.add_argument("--target", required=True)
    me.add_argument("--count", type=int, default=1_000_000)
    me.add_argument("--first", default="127.100.0.1")
    me.add_argument("--concurrency", type=int, default=256)
    me.add_argument("--time-limit", type=float, default=300.0)
    me.add_argument("--timeout", type=float, default=5.0)
    me.add_argument("--out")
    a = p.parse_args()
    if a.cmd == "table":
        table(a.files)
    elif a.cmd == "attack":
        attack_main(a)
    else:
        asyncio.run(memory(a))


if __name__ == "__main__":
    main()
