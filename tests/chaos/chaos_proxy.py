#!/usr/bin/python3
"""A fault-injecting TCP proxy for the chaos run (issue 11): python3 standard library only.

    chaos_proxy.py --listen PORT --target HOST:PORT [--fault-rate P] [--seed N]
                   [--stats FILE] [--capture DIR] [--port-file FILE]

Forwards every connection to the target. With probability --fault-rate a connection gets one
fault, chosen uniformly among the classes below, at a random byte offset of the server's
response stream (corrupt may hit the client's request stream instead):

    drop      close both sides (FIN) after N response bytes
    reset     abort both sides (RST, SO_LINGER 0) after N response bytes
    corrupt   flip one bit of byte N (responses; a third of them in the requests)
    stall     stop forwarding responses for 0.3 or 2 s after N bytes
    collapse  after N bytes, forward responses at 40 KB/s for the rest of the connection

--stats FILE is rewritten (JSON) after every connection: connections per fault class, and
for each class how many faults actually fired (a connection may end before its offset).
--capture DIR writes each connection's two byte streams (DIR/<n>.up: client to server,
DIR/<n>.down: server to client), unmodified, as seeds for the whole-loop fuzz targets.
--listen 0 picks a free port, written to --port-file.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import sys

CLASSES = ["drop", "reset", "corrupt", "stall", "collapse"]
COLLAPSE_BYTES_PER_S = 40_000
MAX_OFFSET = 50_000  # response bytes before a fault fires (a chaos fetch moves ~60 KB)


class Proxy:
    def __init__(self, args):
        self.target_host, port = args.target.rsplit(":", 1)
        self.target_port = int(port)
        self.rate = args.fault_rate
        self.rng = random.Random(args.seed)
        self.stats_path = args.stats
        self.capture = args.capture
        self.count = 0
        self.stats = {"connections": 0, "clean": 0, "target_unreachable": 0,
                      "assigned": {c: 0 for c in CLASSES}, "fired": {c: 0 for c in CLASSES},
                      "bytes_up": 0, "bytes_down": 0}

    def write_stats(self):
        if not self.stats_path:
            return
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.stats, f, indent=1)
        os.replace(tmp, self.stats_path)

    def plan(self):
        if self.rng.random() >= self.rate:
            return None
        fault = {"kind": self.rng.choice(CLASSES), "at": self.rng.randrange(0, MAX_OFFSET),
                 "up": False, "stall_s": self.rng.choice([0.3, 2.0])}
        if fault["kind"] == "corrupt" and self.rng.random() < 1 / 3:
            fault["up"] = True
            fault["at"] = self.rng.randrange(0, 300)  # requests are small
        fault["bit"] = 1 << self.rng.randrange(8)
        return fault

    async def handle(self, creader, cwriter):
        n = self.count
        self.count += 1
        self.stats["connections"] += 1
        fault = self.plan()
        if fault:
            self.stats["assigned"][fault["kind"]] += 1
        else:
            self.stats["clean"] += 1
        try:
            sreader, swriter = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self.stats["target_unreachable"] += 1
            cwriter.close()
            self.write_stats()
            return
        state = {"fired": False, "done": False}
        rec = {"up": bytearray(), "down": bytearray()} if self.capture else None

        def abort_all(rst):
            if state["done"]:
                return
            state["done"] = True
            for w in (cwriter, swriter):
                sock = w.get_extra_info("socket")
                if rst and sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort() if rst else w.close()

        async def pump(reader, writer, up):
            seen = 0
            rate = None
            try:
                while not state["done"]:
                    data = await reader.read(16384)
                    if not data:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    if rec is not None:
                        rec["up" if up else "down"].extend(data)
                    self.stats["bytes_up" if up else "bytes_down"] += len(data)
                    mine = fault is not None and fault["up"] == up and not state["fired"]
                    if mine and seen + len(data) > fault["at"]:
                        state["fired"] = True
                        self.stats["fired"][fault["kind"]] += 1
                        cut = fault["at"] - seen
                        kind = fault["kind"]
                        if kind in ("drop", "reset"):
                            writer.write(data[:cut])
                            await writer.drain()
                            abort_all(kind == "reset")
                            return
                        if kind == "corrupt":
                            data = bytearray(data)
                            data[cut] ^= fault["bit"]
                            data = bytes(data)
                        elif kind == "stall":
                            writer.write(data[:cut])
                            await writer.drain()
                            await asyncio.sleep(fault["stall_s"])
                            data = data[cut:]
                        elif kind == "collapse":
                            writer.write(data[:cut])
                            await writer.drain()
                            data = data[cut:]
                            rate = COLLAPSE_BYTES_PER_S
                    seen += len(data)
                    if rate:
                        for i in range(0, len(data), 2000):
                            writer.write(data[i:i + 2000])
                            await writer.drain()
                            await asyncio.sleep(len(data[i:i + 2000]) / rate)
                    else:
                        writer.write(data)
                        await writer.drain()
            except (ConnectionError, OSError):
                abort_all(False)

        await asyncio.gather(pump(creader, swriter, True), pump(sreader, cwriter, False))
        abort_all(False)
        if rec is not None:
            for k, v in rec.items():
                with open(os.path.join(self.capture, f"{n}.{k}"), "wb") as f:
                    f.write(v)
        self.write_stats()


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--fault-rate", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stats")
    ap.add_argument("--capture")
    ap.add_argument("--port-file")
    args = ap.parse_args()
    if not 0 <= args.fault_rate <= 1:
        sys.exit("chaos_proxy: --fault-rate must be in [0, 1]")
    if args.capture:
        os.makedirs(args.capture, exist_ok=True)
    proxy = Proxy(args)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.listen)
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)
    proxy.write_stats()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with server:
        await stop
    proxy.write_stats()


if __name__ == "__main__":
    asyncio.run(main())
